//! `metalvirt-bench`: a libvirt remote-protocol load generator built on metalvirt's own wire
//! layer. It drives any libvirt daemon the same way (metalvirtd, or libvirtd with its test
//! driver), with many connections and pipelined calls, and prints calls/s per workload.
//!
//! Usage: metalvirt-bench --socket PATH [--name URI] [--conns N] [--depth D] [--secs S]
//!        [--domains N] [--pid PID] [--label TEXT] [--json]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metalvirt::loadgen::{rss_kib, CallError, Conn};
use metalvirt::protocol::procs as p;
use metalvirt::protocol::types::*;
use metalvirt::protocol::xdr::from_bytes;

#[derive(Debug, Parser, Clone)]
#[command(name = "metalvirt-bench")]
struct Cli {
    /// The daemon's read-write unix socket.
    #[arg(long)]
    socket: String,
    /// Name sent in CONNECT_OPEN (e.g. `qemu:///system`, `test:///default`).
    #[arg(long, default_value = "qemu:///system")]
    name: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Domains defined before the read workloads.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Daemon pid, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Label for the output.
    #[arg(long, default_value = "daemon")]
    label: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>1024</memory><vcpu>1</vcpu>\
<os><type arch='x86_64'>hvm</type></os><devices>\
<disk type='file' device='disk'><source file='/var/lib/images/{name}.img'/><target dev='vda' bus='virtio'/></disk>\
<interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/><model type='virtio'/></interface>\
</devices></domain>"
    )
}

/// Runs `op` on every (connection, slot) until time is up; returns calls/s.
async fn run<F, Fut>(conns: &[Arc<Conn>], depth: usize, secs: f64, calls_per_op: u64, op: F) -> f64
where
    F: Fn(Arc<Conn>, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), CallError>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for (ci, c) in conns.iter().enumerate() {
        for slot in 0..depth {
            let (c, stop, count, errors, op) = (
                c.clone(),
                stop.clone(),
                count.clone(),
                errors.clone(),
                op.clone(),
            );
            let seed = (ci * depth + slot) as u64;
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match op(c.clone(), seed * 1_000_000 + i).await {
                        Ok(()) => {
                            count.fetch_add(calls_per_op, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("error: {e}");
                            }
                        }
                    }
                    i += 1;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = count.load(Ordering::Relaxed);
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut conns = Vec::new();
    for _ in 0..cli.conns {
        conns.push(Conn::open(&cli.socket, &cli.name).await);
    }
    let admin = conns[0].clone();
    let rss_before = cli.pid.and_then(rss_kib);

    // Setup: N persistent domains.
    let mut doms: Vec<Domain> = Vec::new();
    for i in 0..cli.domains {
        let r = admin
            .call(
                p::DOMAIN_DEFINE_XML,
                &Str {
                    s: domain_xml(&format!("bench-{i}")),
                },
            )
            .await
            .expect("define");
        doms.push(from_bytes::<Dom>(&r).expect("dom").dom);
    }
    let doms = Arc::new(doms);
    // Steady state: let the daemon finish background work (e.g. writing definition files).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = cli.pid.and_then(rss_kib);

    let mut results: Vec<(&str, f64)> = Vec::new();
    let r = run(&conns, cli.depth, cli.secs, 1, |c, _| async move {
        c.call(p::CONNECT_GET_LIB_VERSION, &()).await.map(|_| ())
    })
    .await;
    results.push(("GET_LIB_VERSION", r));

    let d = doms.clone();
    let r = run(&conns, cli.depth, cli.secs, 2, move |c, i| {
        let d = d.clone();
        async move {
            let dom = &d[(i as usize * 7919) % d.len()];
            let r = c
                .call(
                    p::DOMAIN_LOOKUP_BY_UUID,
                    &LookupByUuidArgs { uuid: dom.uuid },
                )
                .await?;
            let dom = from_bytes::<Dom>(&r).map_err(CallError::decode)?.dom;
            c.call(p::DOMAIN_GET_INFO, &Dom { dom }).await.map(|_| ())
        }
    })
    .await;
    results.push(("LOOKUP_BY_UUID+GET_INFO", r));

    let d = doms.clone();
    let r = run(&conns, cli.depth, cli.secs, 1, move |c, i| {
        let d = d.clone();
        async move {
            let dom = d[(i as usize * 7919) % d.len()].clone();
            c.call(p::DOMAIN_GET_XML_DESC, &DomFlags { dom, flags: 0 })
                .await
                .map(|_| ())
        }
    })
    .await;
    results.push(("GET_XML_DESC", r));

    let r = run(&conns, cli.depth, cli.secs, 1, |c, _| async move {
        c.call(
            p::CONNECT_LIST_ALL_DOMAINS,
            &ListAllDomainsArgs {
                need_results: 1,
                flags: 0,
            },
        )
        .await
        .map(|_| ())
    })
    .await;
    results.push(("LIST_ALL_DOMAINS", r));

    let r = run(&conns, cli.depth, cli.secs, 2, |c, i| async move {
        let r = c
            .call(
                p::DOMAIN_DEFINE_XML,
                &Str {
                    s: domain_xml(&format!("tmp-{i}")),
                },
            )
            .await?;
        let dom = from_bytes::<Dom>(&r).map_err(CallError::decode)?.dom;
        c.call(p::DOMAIN_UNDEFINE, &Dom { dom }).await.map(|_| ())
    })
    .await;
    results.push(("DEFINE+UNDEFINE", r));

    let rss_end = cli.pid.and_then(rss_kib);
    for dom in doms.iter() {
        let _ = admin
            .call(p::DOMAIN_UNDEFINE, &Dom { dom: dom.clone() })
            .await;
    }
    if cli.json {
        let mut o = serde_json::Map::new();
        o.insert("label".into(), cli.label.clone().into());
        for (k, v) in &results {
            o.insert((*k).into(), serde_json::json!((v * 10.0).round() / 10.0));
        }
        o.insert("rss_kib_empty".into(), serde_json::json!(rss_before));
        o.insert("rss_kib_with_domains".into(), serde_json::json!(rss_after));
        o.insert("rss_kib_end".into(), serde_json::json!(rss_end));
        println!("{}", serde_json::Value::Object(o));
    } else {
        println!(
            "{} ({} conns x depth {}, {} domains)",
            cli.label, cli.conns, cli.depth, cli.domains
        );
        for (k, v) in &results {
            println!("  {k:<26} {v:>12.0} calls/s");
        }
        if let (Some(a), Some(b)) = (rss_before, rss_after) {
            println!(
                "  RSS empty {a} KiB, with {} domains {b} KiB, at end {:?} KiB",
                cli.domains, rss_end
            );
        }
    }
}
