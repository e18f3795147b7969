//! `metalvirt-agent-bench`: what a DPU's agent adds to each disk map and NIC plug. In
//! process: an agent (the real server, mutual TLS on 127.0.0.1) in front of the simulated
//! lab's disk and NIC backends with no latency of their own, and the controller's link to
//! it. Each operation is timed called directly on the backend and called through the agent,
//! one after another (latency), then `--concurrency` at once through the one link
//! (throughput).
//!
//! Usage: metalvirt-agent-bench --pki DIR [--calls N] [--concurrency N] [--json]
//! (DIR as tests/blackbox/pki.py's AgentPki lays it out: ca.pem, agent/, controller/;
//! scripts/bench-agent.sh makes one).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use metalvirt::backend::agent::client::{AgentDisks, AgentLink, AgentNics};
use metalvirt::backend::agent::server::{Agent, Backends};
use metalvirt::backend::{DiskSpec, Disks, NicSpec, Nics, Volume};
use metalvirt::config::{AgentConfig, AgentLinkConfig, SimConfig};

#[derive(Debug, Parser)]
#[command(name = "metalvirt-agent-bench")]
struct Cli {
    /// The test PKI (ca.pem, agent/{cert,key}.pem, controller/{cert,key}.pem).
    #[arg(long)]
    pki: PathBuf,
    /// Operations of each kind, one after another.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Operations at once in the throughput run.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn disk(i: usize) -> DiskSpec {
    DiskSpec {
        handle: format!("mv-{:032x}-vda", i + 1),
        target: "vda".into(),
        source: format!("nvme-tcp:vol{i}"),
        readonly: false,
        auth: None,
        serial: None,
        volume: Volume::Nvmf {
            transport: "tcp".into(),
            subnqn: format!("nqn.2016-06.io.spdk:vol{i}"),
            host: "127.0.0.1".into(),
            port: 4420,
        },
        unit: Some(1),
        bus: Some("virtio".into()),
        qos: None,
    }
}

fn nic(i: usize) -> NicSpec {
    NicSpec {
        handle: format!("mv-{:032x}-525400000001", i + 1),
        mac: "52:54:00:00:00:01".into(),
        bridge: Some("br-int".into()),
        interface_id: Some(format!("port-{i}")),
        domain_uuid: format!("{:032x}", i + 1),
        representor: None,
    }
}

/// Median and 99th percentile, in microseconds.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p = |q: f64| us(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    (p(0.5), p(0.99))
}

/// Times `calls` map+unmap pairs (each half timed on its own).
async fn disk_pairs(d: &dyn Disks, calls: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut map, mut unmap) = (Vec::new(), Vec::new());
    for i in 0..calls {
        let s = disk(i % 64);
        let t = Instant::now();
        d.attach(&s).await.expect("attach");
        map.push(t.elapsed());
        let t = Instant::now();
        d.detach(&s.handle).await.expect("detach");
        unmap.push(t.elapsed());
    }
    (map, unmap)
}

async fn nic_pairs(n: &dyn Nics, calls: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut plug, mut unplug) = (Vec::new(), Vec::new());
    for i in 0..calls {
        let s = nic(i % 64);
        let t = Instant::now();
        n.plug(&s).await.expect("plug");
        plug.push(t.elapsed());
        let t = Instant::now();
        n.unplug(&s.handle).await.expect("unplug");
        unplug.push(t.elapsed());
    }
    (plug, unplug)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    let state = std::env::temp_dir().join(format!("metalvirt-agent-bench-{}", std::process::id()));
    let pki = |p: &str| cli.pki.join(p);
    let cfg = AgentConfig {
        node: "bench-1".into(),
        listen: "127.0.0.1:0".into(),
        cert_file: pki("agent/cert.pem"),
        key_file: pki("agent/key.pem"),
        ca_file: pki("ca.pem"),
        state_dir: state.clone(),
        disks: None,
        nics: None,
        sim: SimConfig {
            nodes: 1,
            disk_latency_ms: 0,
            nic_latency_ms: 0,
            power_latency_ms: 0,
            ..SimConfig::default()
        },
        bmc: None,
        base_dir: PathBuf::from("."),
    };
    let backends = Backends::build(&cfg).expect("backends");
    let (local_disks, local_nics) = (backends.disks.clone(), backends.nics.clone());
    let agent = Agent::bind(&cfg, backends, None).await.expect("bind");
    let addr = agent.local_addr().expect("address");
    let server = tokio::spawn(agent.serve(std::future::pending()));
    let link = AgentLink::start(
        "bench-1",
        &AgentLinkConfig {
            address: addr.to_string(),
            server_name: Some("localhost".into()),
            cert_file: pki("controller/cert.pem"),
            key_file: pki("controller/key.pem"),
            ca_file: pki("ca.pem"),
            timeout_s: 30.0,
            connect_timeout_s: 5.0,
        },
        &|p| p.to_path_buf(),
    )
    .expect("link");
    let (disks, nics) = (AgentDisks(link.clone()), AgentNics(link));
    // Warm-up: connection, TLS, allocator.
    disk_pairs(&disks, 50).await;
    nic_pairs(&nics, 50).await;
    disk_pairs(local_disks.as_ref(), 50).await;
    nic_pairs(local_nics.as_ref(), 50).await;

    let n = cli.calls;
    let (lm, lu) = disk_pairs(local_disks.as_ref(), n).await;
    let (am, au) = disk_pairs(&disks, n).await;
    let (lp, lq) = nic_pairs(local_nics.as_ref(), n).await;
    let (ap, aq) = nic_pairs(&nics, n).await;
    let rows = [
        ("disk map", stats(lm), stats(am)),
        ("disk unmap", stats(lu), stats(au)),
        ("NIC plug", stats(lp), stats(ap)),
        ("NIC unplug", stats(lq), stats(aq)),
    ];
    // Throughput: `concurrency` domains' disks mapped at once, then unmapped, through the
    // one link, repeated.
    let c = cli.concurrency;
    let rounds = (n / c).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        join_all((0..c).map(|i| {
            let d = disks.clone();
            async move { d.attach(&disk(1000 + i)).await.expect("attach") }
        }))
        .await;
        join_all((0..c).map(|i| {
            let d = disks.clone();
            async move { d.detach(&disk(1000 + i).handle).await.expect("detach") }
        }))
        .await;
    }
    let per_sec = (2 * rounds * c) as f64 / t.elapsed().as_secs_f64();
    server.abort();
    let _ = std::fs::remove_dir_all(&state);
    if cli.json {
        let mut o = serde_json::Map::new();
        for (name, (l50, l99), (a50, a99)) in rows {
            o.insert(
                name.replace(' ', "_"),
                serde_json::json!({"local_p50_us": l50, "local_p99_us": l99,
                    "agent_p50_us": a50, "agent_p99_us": a99, "added_p50_us": a50 - l50}),
            );
        }
        o.insert("concurrent_ops_per_s".into(), serde_json::json!(per_sec));
        println!("{}", serde_json::Value::Object(o));
        return;
    }
    println!("{n} operations of each kind, one after another (µs)");
    println!("| operation | local p50 | local p99 | agent p50 | agent p99 | added p50 |");
    println!("|---|---|---|---|---|---|");
    for (name, (l50, l99), (a50, a99)) in rows {
        println!(
            "| {name} | {l50:.0} | {l99:.0} | {a50:.0} | {a99:.0} | {:.0} |",
            a50 - l50
        );
    }
    println!("{c} disk maps/unmaps at once through one link: {per_sec:.0} operations/s");
}
