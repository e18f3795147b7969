//! The driver in-process against the simulated lab (no sockets, no daemon): the lifecycle
//! table as the APIs drive it, placement, and what recovery decides after a stop. A
//! "restart" drops the driver and opens a new one over the same directories, as a daemon
//! restart does; the simulated hardware keeps its state in the same state directory.

use std::sync::Arc;
use std::time::Duration;

use super::state::{DomainState, Paused, Running, Shutoff};
use super::{DomainObj, Driver};
use crate::backend::{Node, PowerState};
use crate::config::{Config, SimConfig};
use crate::error::code;
use crate::events::lifecycle as ev;
use crate::events::EventKind;

const START_PAUSED: u32 = 1;

/// A lab of `n` simulated nodes in a temp dir, with no simulated latency.
struct Lab {
    dir: tempfile::TempDir,
    sim: SimConfig,
}

impl Lab {
    fn new(n: usize) -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            sim: SimConfig {
                nodes: n,
                power_latency_ms: 0,
                graceful_shutdown_ms: 0,
                disk_latency_ms: 0,
                nic_latency_ms: 0,
                ..SimConfig::default()
            },
        }
    }

    fn config(&self) -> Config {
        let mut cfg = Config {
            sim: self.sim.clone(),
            ..Config::default()
        };
        cfg.config_dir = self.dir.path().join("etc");
        cfg.state_dir = self.dir.path().join("state");
        cfg.socket_dir = self.dir.path().join("run");
        cfg
    }

    /// Opens a driver over the lab, recovering what the last one left (a daemon start).
    async fn open(&self) -> Arc<Driver> {
        let cfg = self.config();
        crate::persist::ensure_dir(&cfg.state_dir, 0o700).unwrap();
        let nodes = crate::backend::sim::build(&cfg.sim, &cfg.state_dir).unwrap();
        Driver::open(cfg, nodes).await.unwrap()
    }

    fn status_file(&self, obj: &DomainObj) -> std::path::PathBuf {
        self.dir
            .path()
            .join("state/domains")
            .join(format!("{}.json", obj.uuid))
    }
}

/// A domain with one Ceph disk and one OVS port; `extra` goes into `<domain>` (metadata).
fn domain_xml(name: &str, n: u8, extra: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='GiB'>4</memory><vcpu>2</vcpu>\
         <os><type>hvm</type></os>{extra}<devices>\
         <disk type='network' device='disk'><source protocol='rbd' name='volumes/{name}'>\
         <host name='10.0.0.1' port='6789'/></source><target dev='vda' bus='virtio'/></disk>\
         <interface type='bridge'><mac address='fa:16:3e:00:00:{n:02x}'/>\
         <source bridge='br-int'/><virtualport type='openvswitch'/></interface>\
         </devices></domain>"
    )
}

fn pinned(node: &str) -> String {
    format!(
        "<metadata><metalvirt:node xmlns:metalvirt='{}' name='{node}'/></metadata>",
        crate::domain::def::METALVIRT_NS
    )
}

async fn define(d: &Driver, name: &str, n: u8, extra: &str) -> Arc<DomainObj> {
    let r = d.define_xml(&domain_xml(name, n, extra), 0).await.unwrap();
    d.lookup_uuid(&r.uuid).unwrap()
}

fn state(obj: &DomainObj) -> DomainState {
    obj.with(|s| s.state())
}

fn node_of(obj: &DomainObj) -> Option<String> {
    obj.with(|s| s.node.clone())
}

fn node<'a>(d: &'a Driver, name: &str) -> &'a Node {
    d.node(name).unwrap()
}

/// What the node's backends hold: (disk handles, NIC handles, power).
async fn hardware(n: &Node) -> (Vec<String>, Vec<String>, PowerState) {
    (
        n.disks.list().await.unwrap(),
        n.nics.list().await.unwrap(),
        n.power.state().await.unwrap().state,
    )
}

/// The lifecycle events published since the last call.
fn lifecycle_events(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::events::DomainEvent>>,
) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let EventKind::Lifecycle { event, detail } = e.kind {
            out.push((event, detail));
        }
    }
    out
}

// ---------------------------------------------------------------- the lifecycle table

#[tokio::test]
async fn start_and_destroy_follow_the_table_and_touch_the_hardware() {
    let lab = Lab::new(1);
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    let mut rx = d.events.subscribe();
    assert_eq!(state(&obj), DomainState::Shutoff(Shutoff::Unknown));

    d.create(&obj, 0).await.unwrap();
    assert_eq!(state(&obj), DomainState::Running(Running::Booted));
    assert_eq!(
        lifecycle_events(&mut rx),
        [(ev::STARTED, ev::STARTED_BOOTED)]
    );
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert_eq!((disks.len(), nics.len(), power), (1, 1, PowerState::On));
    assert!(obj.with(|s| s.id) > 0);

    let e = d.create(&obj, 0).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_INVALID, "{e}");

    d.destroy(&obj, 0).await.unwrap();
    assert_eq!(state(&obj), DomainState::Shutoff(Shutoff::Destroyed));
    assert_eq!(
        lifecycle_events(&mut rx),
        [(ev::STOPPED, ev::STOPPED_DESTROYED)]
    );
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert!(disks.is_empty() && nics.is_empty(), "{disks:?} {nics:?}");
    assert_eq!(power, PowerState::Off);
    assert!(
        !lab.status_file(&obj).exists(),
        "no live status after a stop"
    );

    let e = d.destroy(&obj, 0).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_INVALID, "{e}");
}

#[tokio::test]
async fn a_paused_start_maps_devices_and_powers_on_only_at_resume() {
    let lab = Lab::new(1);
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    let mut rx = d.events.subscribe();

    d.create(&obj, START_PAUSED).await.unwrap();
    assert_eq!(state(&obj), DomainState::Paused(Paused::User));
    assert_eq!(
        lifecycle_events(&mut rx),
        [
            (ev::STARTED, ev::STARTED_BOOTED),
            (ev::SUSPENDED, ev::SUSPENDED_PAUSED)
        ]
    );
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert_eq!((disks.len(), nics.len(), power), (1, 1, PowerState::Off));

    d.resume(&obj).await.unwrap();
    assert_eq!(state(&obj), DomainState::Running(Running::Unpaused));
    assert_eq!(
        lifecycle_events(&mut rx),
        [(ev::RESUMED, ev::RESUMED_UNPAUSED)]
    );
    assert_eq!(hardware(node(&d, "node-1")).await.2, PowerState::On);

    let e = d.resume(&obj).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_INVALID, "{e}");
}

#[tokio::test]
async fn a_failed_start_rolls_back_every_step_and_frees_the_node() {
    let mut lab = Lab::new(1);
    lab.sim.fail_nic_macs = vec!["fa:16:3e:00:00:01".into()];
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    let mut rx = d.events.subscribe();

    let e = d.create(&obj, 0).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_FAILED);
    assert!(
        e.message
            .contains("cannot plug NIC fa:16:3e:00:00:01 on node-1"),
        "{e}"
    );
    assert_eq!(state(&obj), DomainState::Shutoff(Shutoff::Failed));
    assert!(
        lifecycle_events(&mut rx).is_empty(),
        "a start that never happened is not announced"
    );
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert!(
        disks.is_empty() && nics.is_empty(),
        "the disk mapped next to the NIC went too"
    );
    assert_eq!(power, PowerState::Off);
    assert!(!lab.status_file(&obj).exists());

    // The node is free again: another domain (whose NIC works) gets it.
    let other = define(&d, "vm2", 2, "").await;
    d.create(&other, 0).await.unwrap();
    assert_eq!(node_of(&other).as_deref(), Some("node-1"));
}

// ---------------------------------------------------------------- placement

#[tokio::test]
async fn placement_gives_each_domain_its_own_node_and_keeps_them_sticky() {
    let lab = Lab::new(2);
    let d = lab.open().await;
    let a = define(&d, "a", 1, "").await;
    let b = define(&d, "b", 2, "").await;
    let c = define(&d, "c", 3, "").await;

    d.create(&a, 0).await.unwrap();
    d.create(&b, 0).await.unwrap();
    let (na, nb) = (node_of(&a).unwrap(), node_of(&b).unwrap());
    assert_ne!(na, nb);
    let e = d.create(&c, 0).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_FAILED);
    assert!(e.message.contains("no free node"), "{e}");
    assert_eq!(
        state(&c),
        DomainState::Shutoff(Shutoff::Unknown),
        "refused before any state change"
    );

    // Both stop; each comes back to the node it had (its disks' and NICs' home), in
    // either order, also after a restart of the daemon.
    d.destroy(&a, 0).await.unwrap();
    d.destroy(&b, 0).await.unwrap();
    drop((a, b, c, d));
    let d = lab.open().await;
    let (a, b) = (d.lookup_name("a").unwrap(), d.lookup_name("b").unwrap());
    d.create(&b, 0).await.unwrap();
    d.create(&a, 0).await.unwrap();
    assert_eq!((node_of(&a).unwrap(), node_of(&b).unwrap()), (na, nb));
}

#[tokio::test]
async fn placement_honours_pins_and_sizes() {
    let lab = Lab::new(2);
    let d = lab.open().await;
    let pinned2 = define(&d, "p", 1, &pinned("node-2")).await;
    d.create(&pinned2, 0).await.unwrap();
    assert_eq!(node_of(&pinned2).as_deref(), Some("node-2"));

    let rival = define(&d, "rival", 2, &pinned("node-2")).await;
    let e = d.create(&rival, 0).await.unwrap_err();
    assert_eq!(e.code, code::OPERATION_FAILED);
    assert!(e.message.contains("node 'node-2' is in use"), "{e}");

    let nowhere = define(&d, "nowhere", 3, &pinned("node-9")).await;
    let e = d.create(&nowhere, 0).await.unwrap_err();
    assert_eq!(e.code, code::CONFIG_UNSUPPORTED, "{e}");

    let xml = domain_xml("huge", 4, "").replace(
        "<memory unit='GiB'>4</memory>",
        "<memory unit='TiB'>4</memory>",
    );
    let huge = d.define_xml(&xml, 0).await.unwrap();
    let huge = d.lookup_uuid(&huge.uuid).unwrap();
    let e = d.create(&huge, 0).await.unwrap_err();
    assert!(
        e.message
            .contains("no free node with at least 2 CPUs and 4194304 MiB"),
        "{e}"
    );
    // node-1 stayed free through all of this.
    let free = define(&d, "free", 5, "").await;
    d.create(&free, 0).await.unwrap();
    assert_eq!(node_of(&free).as_deref(), Some("node-1"));
}

// ---------------------------------------------------------------- recovery

#[tokio::test]
async fn a_running_domain_is_reattached_after_a_restart() {
    let lab = Lab::new(2);
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    d.create(&obj, 0).await.unwrap();
    let (id, n) = (obj.with(|s| s.id), node_of(&obj).unwrap());
    drop((obj, d));

    let d = lab.open().await;
    let obj = d.lookup_name("vm1").unwrap();
    assert_eq!(state(&obj), DomainState::Running(Running::Booted));
    assert_eq!(
        (obj.with(|s| s.id), node_of(&obj).unwrap()),
        (id, n.clone())
    );
    let (disks, nics, power) = hardware(node(&d, &n)).await;
    assert_eq!(
        (disks.len(), nics.len(), power),
        (1, 1, PowerState::On),
        "nothing undone"
    );
    // Its node counts as taken again, and ids go on from where they were.
    let rival = define(&d, "rival", 2, &pinned(&n)).await;
    assert!(d
        .create(&rival, 0)
        .await
        .unwrap_err()
        .message
        .contains("in use"));
    let other = define(&d, "other", 3, "").await;
    d.create(&other, 0).await.unwrap();
    assert!(other.with(|s| s.id) > id);
}

#[tokio::test]
async fn a_start_interrupted_by_a_stop_is_undone_at_the_next_start() {
    let mut lab = Lab::new(1);
    // The BMC never answers the power-on: the start stays in flight with its disk and NIC
    // mapped and its power step journaled, as when the daemon is killed there.
    lab.sim.hang_power_on_nodes = vec!["node-1".into()];
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    let status = lab.status_file(&obj);
    let start = tokio::spawn({
        let (d, obj) = (d.clone(), obj.clone());
        async move { d.create(&obj, 0).await }
    });
    for _ in 0..500 {
        if std::fs::read_to_string(&status).is_ok_and(|s| s.contains("power_on")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(std::fs::read_to_string(&status)
        .unwrap()
        .contains("power_on"));
    start.abort();
    let _ = start.await;
    // As a daemon killed there would leave it (the log's changes written to their files,
    // as the next open would do itself).
    d.flush().await.unwrap();
    drop((obj, d));

    lab.sim.hang_power_on_nodes.clear();
    let d = lab.open().await;
    let obj = d.lookup_name("vm1").unwrap();
    assert_eq!(state(&obj), DomainState::Shutoff(Shutoff::Failed));
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert!(disks.is_empty() && nics.is_empty(), "{disks:?} {nics:?}");
    assert_eq!(power, PowerState::Off);
    d.flush().await.unwrap();
    assert!(!status.exists());
    // Nothing is left holding the node.
    d.create(&obj, 0).await.unwrap();
    assert_eq!(state(&obj), DomainState::Running(Running::Booted));
}

#[tokio::test]
async fn unreadable_live_state_quarantines_and_leaves_the_server_alone() {
    let lab = Lab::new(1);
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, "").await;
    d.create(&obj, 0).await.unwrap();
    let status = lab.status_file(&obj);
    d.flush().await.unwrap();
    drop((obj, d));
    std::fs::write(&status, b"{ not json").unwrap();

    let d = lab.open().await;
    let obj = d.lookup_name("vm1").unwrap();
    assert!(obj.with(|s| s.quarantine.is_some()));
    for e in [
        d.create(&obj, 0).await.unwrap_err(),
        d.destroy(&obj, 0).await.map(drop).unwrap_err(),
    ] {
        assert_eq!(e.code, code::OPERATION_INVALID);
        assert!(e.message.contains("quarantined"), "{e}");
    }
    let (disks, nics, power) = hardware(node(&d, "node-1")).await;
    assert_eq!(
        (disks.len(), nics.len(), power),
        (1, 1, PowerState::On),
        "left as it was"
    );
    assert!(status.exists(), "the evidence stays for the operator");
}

#[tokio::test]
async fn a_run_on_a_node_no_longer_configured_is_quarantined() {
    let mut lab = Lab::new(2);
    let d = lab.open().await;
    let obj = define(&d, "vm1", 1, &pinned("node-2")).await;
    d.create(&obj, 0).await.unwrap();
    drop((obj, d));

    lab.sim.nodes = 1;
    let d = lab.open().await;
    let obj = d.lookup_name("vm1").unwrap();
    let why = obj.with(|s| s.quarantine.clone()).unwrap();
    assert!(
        why.contains("node 'node-2' is no longer configured"),
        "{why}"
    );
}
