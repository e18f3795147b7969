//! `metalvirt-ovs-bench`: the NIC backend's own cost, in process, against a real OVSDB.
//! Plug/unplug through `OvsNics` (what metalvirtd runs for each interface) versus the bare
//! transactions on a plain `Ovsdb` connection, in the same run on the same server; then
//! `--nodes` plugs at once, one per node (pool of one representor each), versus as many
//! concurrent bare transactions. `benches/ovs_peers.py` runs it next to the libvirt-level
//! figures. The server needs a `br-int` bridge; nothing is left in it afterwards.
//!
//! Usage: metalvirt-ovs-bench --ovsdb unix:/path/db.sock [--rounds N] [--nodes N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metalvirt::backend::ovs::ovsdb::Ovsdb;
use metalvirt::backend::ovs::{Function, OvsNics, OvsSettings, Session, WaitFor};
use metalvirt::backend::{NicSpec, Nics};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "metalvirt-ovs-bench")]
struct Cli {
    /// The OVSDB (`unix:/path` or `tcp:host:port`).
    #[arg(long)]
    ovsdb: String,
    /// Sequential plug+unplug rounds.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Nodes plugging at once.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
}

fn settings(node: &str, rep: &str) -> OvsSettings {
    OvsSettings {
        node: node.into(),
        bridge: "br-int".into(),
        functions: vec![Function {
            function: rep.into(),
            representor: rep.into(),
        }],
        interface_type: String::new(),
        wait: WaitFor::Commit,
        plug_timeout: Duration::from_secs(10),
        mac_command: None,
        mac_sysfs: None,
        step_timeout: Duration::from_secs(10),
    }
}

fn spec(i: usize) -> NicSpec {
    NicSpec {
        handle: format!("mv-{:032x}-525400{:06x}", i + 1, i),
        mac: format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ),
        bridge: None,
        interface_id: Some(format!("bench-{i}")),
        domain_uuid: format!("00000000-0000-0000-0000-{:012x}", i + 1),
        representor: None,
    }
}

/// What `OvsNics` sends, bare: the same waits, rows and mutations.
fn add_ops(rep: &str, s: &NicSpec) -> Vec<Value> {
    let ids = json!([
        "map",
        [
            ["iface-id", s.interface_id],
            ["attached-mac", s.mac],
            ["iface-status", "active"],
            ["vm-uuid", s.domain_uuid]
        ]
    ]);
    vec![
        json!({"op": "wait", "table": "Bridge", "timeout": 0, "where": [["name", "==", "br-int"]],
               "columns": ["name"], "until": "==", "rows": [{"name": "br-int"}]}),
        json!({"op": "wait", "table": "Interface", "timeout": 0, "where": [["name", "==", rep]],
               "columns": ["name"], "until": "==", "rows": []}),
        json!({"op": "insert", "table": "Interface", "uuid-name": "i",
               "row": {"name": rep, "type": "", "external_ids": ids}}),
        json!({"op": "insert", "table": "Port", "uuid-name": "p",
               "row": {"name": rep, "interfaces": ["named-uuid", "i"]}}),
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
               "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]}),
        json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["next_cfg", "+=", 1]]}),
    ]
}

fn del_ops(port: &str) -> Vec<Value> {
    vec![
        json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
               "mutations": [["ports", "delete", ["set", [["uuid", port]]]]]}),
        json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["next_cfg", "+=", 1]]}),
    ]
}

async fn raw_plug(db: &Ovsdb, rep: &str, s: &NicSpec) -> String {
    let r = db.transact("Open_vSwitch", add_ops(rep, s)).await.unwrap();
    r[3]["uuid"][1].as_str().unwrap().to_string()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let t = Duration::from_secs(10);
    let raw = Ovsdb::connect(&cli.ovsdb, t).await.expect("connect");
    let nics = OvsNics::new(
        settings("bench-seq", "bench0"),
        Session::start(&cli.ovsdb, t, None),
    );
    let s = spec(0);
    // Warm up both paths (connection, monitor).
    let p = raw_plug(&raw, "bench0", &s).await;
    raw.transact("Open_vSwitch", del_ops(&p)).await.unwrap();
    nics.plug(&s).await.unwrap();
    nics.unplug(&s.handle).await.unwrap();

    let (mut rp, mut ru, mut np, mut nu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..cli.rounds {
        let t0 = Instant::now();
        let p = raw_plug(&raw, "bench0", &s).await;
        rp.push(t0.elapsed());
        let t0 = Instant::now();
        raw.transact("Open_vSwitch", del_ops(&p)).await.unwrap();
        ru.push(t0.elapsed());
        let t0 = Instant::now();
        nics.plug(&s).await.unwrap();
        np.push(t0.elapsed());
        let t0 = Instant::now();
        nics.unplug(&s.handle).await.unwrap();
        nu.push(t0.elapsed());
    }
    let (rp, ru, np, nu) = (median(rp), median(ru), median(np), median(nu));
    println!("# in process, {} rounds, medians", cli.rounds);
    println!("| path | plug | unplug |");
    println!("|---|---:|---:|");
    println!("| bare transact | {rp:.3} ms | {ru:.3} ms |");
    println!("| OvsNics (wait = none) | {np:.3} ms | {nu:.3} ms |");
    println!(
        "| added by the backend | {:+.3} ms | {:+.3} ms |",
        np - rp,
        nu - ru
    );

    // Concurrent: one plug per node, all nodes on one shared session (as the daemon has).
    let n = cli.nodes;
    let session = Session::start(&cli.ovsdb, t, None);
    let pools: Vec<Arc<OvsNics>> = (0..n)
        .map(|i| {
            Arc::new(OvsNics::new(
                settings(&format!("bench-{i}"), &format!("bench-c{i}")),
                session.clone(),
            ))
        })
        .collect();
    pools[0].list().await.unwrap();
    let t0 = Instant::now();
    let plugged = futures::future::join_all(pools.iter().enumerate().map(|(i, p)| {
        let p = p.clone();
        async move { p.plug(&spec(i + 1)).await }
    }))
    .await;
    let wall = t0.elapsed();
    assert!(plugged.iter().all(Result::is_ok), "{plugged:?}");
    futures::future::join_all(
        pools
            .iter()
            .enumerate()
            .map(|(i, p)| async move { p.unplug(&spec(i + 1).handle).await }),
    )
    .await;
    let t0 = Instant::now();
    let raw = &raw;
    let ports = futures::future::join_all(
        (0..n).map(|i| async move { raw_plug(raw, &format!("bench-r{i}"), &spec(i + 1)).await }),
    )
    .await;
    let raw_wall = t0.elapsed();
    for p in ports {
        raw.transact("Open_vSwitch", del_ops(&p)).await.unwrap();
    }
    println!(
        "\n# {n} plugs at once, one per node: OvsNics {:.1} ms wall, bare transacts {:.1} ms wall ({:+.3} ms per plug)",
        wall.as_secs_f64() * 1000.0,
        raw_wall.as_secs_f64() * 1000.0,
        (wall.as_secs_f64() - raw_wall.as_secs_f64()) * 1000.0 / n as f64
    );
}
