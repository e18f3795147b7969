//! `metalvirt-spdk-bench`: time to map and unmap disks through the SPDK backend (what
//! metalvirtd runs at start and destroy), in process, against the SPDK test double
//! (`tests/blackbox/spdk_double`) with a real target's latency modelled: every call answered
//! after 4–8 ms, `bdev_nvme_attach_controller` after 68 ms (the recorded medians).
//!
//! Measures N disks (NVMe-oF volumes) of one domain mapped at once, N = 1, 2, 4, 8, and
//! `--domains` domains with one disk each mapped at once, with the nvmf frontend (one
//! subsystem per domain). Target: 8 disks cost at most twice one disk.
//!
//! Usage: metalvirt-spdk-bench [--rounds N] [--domains N] [--latency 4-8] [--attach-ms 68]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use metalvirt::backend::spdk::double::Double;
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
        qos: None,
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
    let attach_ms = cli.attach_ms.to_string();
    let double = Double::start(
        &["storage", "dpu"],
        &["--latency", &cli.latency, "--attach-latency", &attach_ms],
    );
    let double = &double;
    join_all((0..cli.domains.max(8)).map(|i| async move {
        double
            .nvmf_volume(
                &format!("nqn.2016-06.io.spdk:vol{i}"),
                &format!("Vol{i}"),
                1024,
                4420,
            )
            .await
    }))
    .await;
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
