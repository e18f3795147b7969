//! `metalvirt-spdk-bench`: time to map and unmap disks through the SPDK backend (what
//! metalvirtd runs at start and destroy), in process, against the SPDK test double
//! (`tests/python/spdk_double.py`) with a real target's latency modelled: every call answered
//! after 4–8 ms, `bdev_nvme_attach_controller` after 68 ms (the recorded medians).
//!
//! Measures N disks (NVMe-oF volumes) of one domain mapped at once, N = 1, 2, 4, 8, and
//! `--domains` domains with one disk each mapped at once, with the nvmf frontend (one
//! subsystem per domain). Target: 8 disks cost at most twice one disk.
//!
//! Usage: metalvirt-spdk-bench [--rounds N] [--domains N] [--latency 4-8] [--attach-ms 68]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use metalvirt::backend::spdk::rpc::Spdk;
use metalvirt::backend::spdk::{Listen, Nvmf, SpdkDisks, SpdkSettings};
use metalvirt::backend::{DiskSpec, Disks, Volume};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "metalvirt-spdk-bench")]
struct Cli {
    /// Rounds per measurement.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Domains mapped at once.
    #[arg(long, default_value_t = 50)]
    domains: usize,
    /// Per-call latency of the double, ms (`MIN-MAX`).
    #[arg(long, default_value = "4-8")]
    latency: String,
    /// Latency of bdev_nvme_attach_controller, ms.
    #[arg(long, default_value_t = 68)]
    attach_ms: u64,
}

/// The double in its own process group, on a temp dir; killed when dropped.
struct Double {
    child: std::process::Child,
    dir: PathBuf,
}

impl Double {
    fn start(latency: &str, attach_ms: u64) -> Double {
        let dir = std::env::temp_dir().join(format!("metalvirt-spdk-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/spdk_double.py");
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--sock",
                &format!("storage={}", dir.join("storage.sock").display()),
            ])
            .args(["--sock", &format!("dpu={}", dir.join("dpu.sock").display())])
            .args([
                "--latency",
                latency,
                "--attach-latency",
                &attach_ms.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("python3 runs tests/python/spdk_double.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SPDK double did not start");
        Double { child, dir }
    }

    fn client(&self, role: &str) -> Spdk {
        Spdk::new(
            self.dir.join(format!("{role}.sock")),
            Duration::from_secs(60),
        )
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `n` remote volumes on the storage role (all at once).
async fn volumes(storage: &Spdk, n: usize) {
    storage
        .call("nvmf_create_transport", Some(json!({"trtype": "TCP"})))
        .await
        .unwrap();
    join_all((0..n).map(|i| async move {
        let nqn = format!("nqn.2016-06.io.spdk:vol{i}");
        let calls = [
            ("bdev_null_create", json!({"name": format!("Vol{i}"), "num_blocks": 262144, "block_size": 4096})),
            ("nvmf_create_subsystem", json!({"nqn": nqn, "allow_any_host": true})),
            ("nvmf_subsystem_add_ns", json!({"nqn": nqn, "namespace": {"bdev_name": format!("Vol{i}"), "nsid": 1}})),
            ("nvmf_subsystem_add_listener", json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}})),
        ];
        for (m, p) in calls {
            storage.call(m, Some(p)).await.unwrap();
        }
    }))
    .await;
}

fn disk(domain: usize, i: usize, vol: usize) -> DiskSpec {
    let target = format!("vd{}", (b'a' + i as u8) as char);
    DiskSpec {
        handle: format!("mv-{:032x}-{target}", domain + 1),
        target,
        source: format!("nvme-tcp:vol{vol}"),
        readonly: false,
        auth: None,
        serial: None,
        volume: Volume::Nvmf {
            transport: "tcp".into(),
            subnqn: format!("nqn.2016-06.io.spdk:vol{vol}"),
            host: "127.0.0.1".into(),
            port: 4420,
        },
        unit: Some(i as u32 + 1),
        bus: Some("virtio".into()),
    }
}

/// Maps all `disks` at once, then unmaps them at once; returns (map, unmap) wall times.
async fn round(b: &SpdkDisks, disks: &[DiskSpec]) -> (Duration, Duration) {
    let t = Instant::now();
    for r in join_all(disks.iter().map(|d| b.attach(d))).await {
        r.unwrap();
    }
    let map = t.elapsed();
    let t = Instant::now();
    for r in join_all(disks.iter().map(|d| b.detach(&d.handle))).await {
        r.unwrap();
    }
    (map, t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let double = Double::start(&cli.latency, cli.attach_ms);
    let storage = double.client("storage");
    volumes(&storage, cli.domains.max(8)).await;
    let backend = SpdkDisks::new(
        SpdkSettings {
            node: "bench".into(),
            initiator_iqn: "iqn.2026-11.io.metalvirt:bench".into(),
            rbd_block_size: 512,
            attach_timeout: Duration::from_secs(60),
            resize_wait: Duration::from_secs(1),
            heal_interval: Duration::from_secs(3600),
        },
        Arc::new(double.client("dpu")),
        Box::new(Nvmf::new(
            Listen::Fabric {
                trtype: "TCP".into(),
                addr: "127.0.0.1".into(),
                port: 4421,
            },
            "nqn.2026-11.io.metalvirt",
            Duration::from_secs(60),
        )),
    );
    println!(
        "SPDK double: {} ms per call, attach {} ms; {} rounds, medians",
        cli.latency, cli.attach_ms, cli.rounds
    );
    println!("{:<34} {:>10} {:>10}", "", "map ms", "unmap ms");
    let mut one = None;
    for n in [1usize, 2, 4, 8] {
        let disks: Vec<DiskSpec> = (0..n).map(|i| disk(0, i, i)).collect();
        let (mut m, mut u) = (Vec::new(), Vec::new());
        for _ in 0..cli.rounds {
            let (a, b) = round(&backend, &disks).await;
            m.push(a);
            u.push(b);
        }
        let (m, u) = (median(m), median(u));
        let base = *one.get_or_insert(m);
        println!(
            "{:<34} {:>10.1} {:>10.1}   ({:.2}x one disk)",
            format!("one domain, {n} disk(s) at once"),
            ms(m),
            ms(u),
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
    let disks: Vec<DiskSpec> = (0..cli.domains).map(|d| disk(d + 1, 0, d)).collect();
    let (mut m, mut u) = (Vec::new(), Vec::new());
    for _ in 0..cli.rounds.div_ceil(2) {
        let (a, b) = round(&backend, &disks).await;
        m.push(a);
        u.push(b);
    }
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        format!("{} domains x 1 disk at once", cli.domains),
        ms(median(m)),
        ms(median(u))
    );
    let left = double
        .client("dpu")
        .call("double_state", Some(json!({"role": "dpu"})))
        .await
        .unwrap();
    assert_eq!(left["bdevs"], json!({}), "the bench left bdevs behind");
    assert_eq!(
        left["subsystems"],
        json!({}),
        "the bench left subsystems behind"
    );
}
