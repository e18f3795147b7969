//! `metalvirt-bench`: a libvirt remote-protocol load generator built on metalvirt's own wire
//! layer. It drives any libvirt daemon the same way (metalvirtd, or libvirtd with its test
//! driver), with many connections and pipelined calls, and prints calls/s per workload.
//!
//! Usage: metalvirt-bench (--socket PATH | --tls HOST:PORT --pki DIR) [--name URI]
//!        [--conns N] [--depth D] [--secs S] [--domains N] [--pid PID] [--label TEXT]
//!        [--workloads A,B] [--connect-rounds N] [--json]
//!
//! Each workload reports calls/s and the median and 99th percentile of one operation's
//! latency; `--connect-rounds` also measures what a new connection costs (connect, TLS
//! handshake and confirmation byte, AUTH_LIST, CONNECT_OPEN, one call, close).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metalvirt::loadgen::{rss_kib, tls_client, tls_connect, CallError, Conn};
use metalvirt::protocol::procs as p;
use metalvirt::protocol::types::*;
use metalvirt::protocol::xdr::from_bytes;

#[derive(Debug, Parser, Clone)]
#[command(name = "metalvirt-bench")]
struct Cli {
    /// The daemon's read-write unix socket.
    /// The daemon's unix socket.
    #[arg(long, required_unless_present = "tls")]
    socket: Option<String>,
    /// The daemon's TLS listener (HOST:PORT), instead of a unix socket.
    #[arg(long, requires = "pki")]
    tls: Option<String>,
    /// Server name the TLS certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_host: String,
    /// libvirt pkipath of the TLS client (cacert.pem, clientcert.pem, clientkey.pem).
    #[arg(long)]
    pki: Option<std::path::PathBuf>,
    /// Only these workloads (comma-separated names as printed), default all.
    #[arg(long)]
    workloads: Option<String>,
    /// New connections made one after another to measure connection set-up.
    #[arg(long, default_value_t = 0)]
    connect_rounds: usize,
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
/// What one workload measured.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// Calls per second (an operation of several calls counts each).
    rate: f64,
    /// Median latency of one operation, in microseconds.
    p50_us: u64,
    /// 99th percentile, in microseconds.
    p99_us: u64,
}

fn percentile(sorted: &[u32], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    u64::from(sorted[i])
}

async fn run<F, Fut>(
    conns: &[Arc<Conn>],
    depth: usize,
    secs: f64,
    calls_per_op: u64,
    op: F,
) -> Outcome
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
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 14);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match op(c.clone(), seed * 1_000_000 + i).await {
                        Ok(()) => {
                            count.fetch_add(calls_per_op, Ordering::Relaxed);
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("error: {e}");
                            }
                        }
                    }
                    i += 1;
                }
                lat
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let n = count.load(Ordering::Relaxed);
    lat.sort_unstable();
    Outcome {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
    }
}

/// How the bench reaches the daemon.
#[derive(Clone)]
enum Endpoint {
    Unix(String),
    Tls {
        addr: String,
        host: String,
        connector: tokio_rustls::TlsConnector,
    },
}

impl Endpoint {
    async fn open(&self, name: &str) -> Arc<Conn> {
        match self {
            Endpoint::Unix(p) => Conn::open(p, name).await,
            Endpoint::Tls {
                addr,
                host,
                connector,
            } => {
                let s = tls_connect(connector, addr, host)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                Conn::open_on(s, name).await
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let endpoint = match (&cli.socket, &cli.tls, &cli.pki) {
        (_, Some(addr), Some(pki)) => Endpoint::Tls {
            addr: addr.clone(),
            host: cli.tls_host.clone(),
            connector: tls_client(pki).unwrap_or_else(|e| panic!("TLS client: {e}")),
        },
        (Some(p), _, _) => Endpoint::Unix(p.clone()),
        _ => unreachable!("clap requires --socket or --tls with --pki"),
    };
    let wanted = |name: &str| {
        cli.workloads
            .as_deref()
            .is_none_or(|w| w.split(',').any(|x| x.trim() == name))
    };
    let mut conns = Vec::new();
    for _ in 0..cli.conns {
        conns.push(endpoint.open(&cli.name).await);
    }
    let admin = conns[0].clone();
    let rss_before = cli.pid.and_then(rss_kib);

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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = cli.pid.and_then(rss_kib);

    let mut results: Vec<(&str, Outcome)> = Vec::new();
    if wanted("GET_LIB_VERSION") {
        let r = run(&conns, cli.depth, cli.secs, 1, |c, _| async move {
            c.call(p::CONNECT_GET_LIB_VERSION, &()).await.map(|_| ())
        })
        .await;
        results.push(("GET_LIB_VERSION", r));
    }

    if wanted("LOOKUP_BY_UUID+GET_INFO") {
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
    }

    if wanted("GET_XML_DESC") {
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
    }

    if wanted("LIST_ALL_DOMAINS") {
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
    }

    if wanted("DEFINE+UNDEFINE") {
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
    }

    // Connection set-up: one new connection after another, each opened, used for one call
    // and closed (what a short-lived client such as a virsh command pays).
    let mut connect_us: Vec<u32> = Vec::new();
    for _ in 0..cli.connect_rounds {
        let t = Instant::now();
        let c = endpoint.open(&cli.name).await;
        c.call(p::CONNECT_GET_LIB_VERSION, &()).await.expect("call");
        let _ = c.call(p::CONNECT_CLOSE, &()).await;
        drop(c);
        connect_us.push(t.elapsed().as_micros() as u32);
    }
    connect_us.sort_unstable();

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
            o.insert(
                (*k).into(),
                serde_json::json!((v.rate * 10.0).round() / 10.0),
            );
            o.insert(format!("{k}_p50_us"), serde_json::json!(v.p50_us));
            o.insert(format!("{k}_p99_us"), serde_json::json!(v.p99_us));
        }
        if !connect_us.is_empty() {
            o.insert(
                "connect_p50_us".into(),
                serde_json::json!(percentile(&connect_us, 0.5)),
            );
            o.insert(
                "connect_p99_us".into(),
                serde_json::json!(percentile(&connect_us, 0.99)),
            );
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
            println!(
                "  {k:<26} {:>12.0} calls/s   p50 {:>6} us   p99 {:>6} us",
                v.rate, v.p50_us, v.p99_us
            );
        }
        if !connect_us.is_empty() {
            println!(
                "  new connection             p50 {} us, p99 {} us ({} rounds)",
                percentile(&connect_us, 0.5),
                percentile(&connect_us, 0.99),
                connect_us.len()
            );
        }
        if let (Some(a), Some(b)) = (rss_before, rss_after) {
            println!(
                "  RSS empty {a} KiB, with {} domains {b} KiB, at end {:?} KiB",
                cli.domains, rss_end
            );
        }
    }
}
