//! `metalvirt-soak`: well-behaved clients doing mixed work while hostile ones try to starve
//! them — clients that never read their replies and a flood of idle read-only connections.
//! Reports errors and latency of the well-behaved clients and the daemon's memory before,
//! during and after (`scripts/soak.sh` runs it against a fresh metalvirtd).
//!
//! Usage: metalvirt-soak --socket RW --ro-socket RO --pid PID [--clients 200] [--calls 1000]
//!        [--non-readers 20] [--idle 1000] [--settle-secs 8] [--json]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metalvirt::loadgen::{rss_kib, CallError, Conn};
use metalvirt::protocol::header::{Header, MessageType, REMOTE_PROGRAM};
use metalvirt::protocol::procs as p;
use metalvirt::protocol::types::*;
use metalvirt::protocol::xdr::{from_bytes, to_bytes};
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser, Clone)]
#[command(name = "metalvirt-soak")]
struct Cli {
    /// The daemon's read-write socket.
    #[arg(long)]
    socket: String,
    /// The daemon's read-only socket.
    #[arg(long)]
    ro_socket: String,
    /// The daemon's pid (for its memory).
    #[arg(long)]
    pid: u32,
    /// Well-behaved clients, all at once.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Calls per well-behaved client (a cycle of 20 mixed calls, repeated).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Clients on the read-only socket that send calls and never read a reply.
    #[arg(long, default_value_t = 20)]
    non_readers: usize,
    /// Idle connections on the read-only socket (connected, never a word).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Seconds to wait after the hostile clients are gone before the last memory reading.
    #[arg(long, default_value_t = 8.0)]
    settle_secs: f64,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn domain_xml(name: &str, i: usize, extra: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><uuid>5e0a0000-0000-4000-8000-{i:012x}</uuid>\
<memory unit='GiB'>1</memory><vcpu>1</vcpu>\
<os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>{extra}<devices>\
<disk type='network' device='disk'><source protocol='rbd' name='volumes/{name}'>\
<host name='10.0.0.1' port='6789'/></source><target dev='vda' bus='virtio'/></disk>\
<interface type='bridge'><mac address='52:54:00:{:02x}:{:02x}:01'/><source bridge='br-int'/>\
<virtualport type='openvswitch'/></interface></devices></domain>",
        i / 256,
        i % 256
    )
}

fn nic_xml(i: usize) -> String {
    format!(
        "<interface type='bridge'><mac address='52:54:00:{:02x}:{:02x}:02'/>\
<source bridge='br-int'/><virtualport type='openvswitch'/></interface>",
        i / 256,
        i % 256
    )
}

/// What one well-behaved client saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    /// Of the reads alone (version, lookup, info, XML, list).
    read_latencies_us: Vec<u32>,
    errors: Vec<String>,
}

async fn well_behaved(cli: Cli, i: usize) -> Seen {
    let c = Conn::open(&cli.socket, "qemu:///system").await;
    let name = format!("soak-{i}");
    let xml = domain_xml(&name, i, "");
    let nic = nic_xml(i);
    let mut seen = Seen::default();
    let t = Instant::now();
    let defined = c.call(p::DOMAIN_DEFINE_XML, &Str { s: xml.clone() }).await;
    seen.latencies_us.push(t.elapsed().as_micros() as u32);
    let dom = match defined.map(|b| from_bytes::<Dom>(&b)) {
        Ok(Ok(d)) => d.dom,
        Ok(Err(e)) => {
            seen.errors.push(format!("define reply: {e}"));
            return seen;
        }
        Err(e) => {
            seen.errors.push(format!("define: {e}"));
            return seen;
        }
    };
    for step in 1..cli.calls {
        let d = || dom.clone();
        let t = Instant::now();
        let r: Result<Vec<u8>, CallError> = match step % 20 {
            0 | 14 | 19 => c.call(p::CONNECT_GET_LIB_VERSION, &()).await,
            1 | 15 => {
                c.call(p::DOMAIN_LOOKUP_BY_NAME, &Str { s: name.clone() })
                    .await
            }
            2 | 7 | 13 | 18 => c.call(p::DOMAIN_GET_INFO, &Dom { dom: d() }).await,
            3 | 9 | 16 => {
                c.call(p::DOMAIN_GET_XML_DESC, &DomFlags { dom: d(), flags: 0 })
                    .await
            }
            4 | 11 | 17 => {
                c.call(
                    p::CONNECT_LIST_ALL_DOMAINS,
                    &ListAllDomainsArgs {
                        need_results: 1,
                        flags: 0,
                    },
                )
                .await
            }
            5 => c.call(p::DOMAIN_DEFINE_XML, &Str { s: xml.clone() }).await,
            6 => c.call(p::DOMAIN_CREATE, &Dom { dom: d() }).await,
            8 => {
                let a = DomXmlFlags {
                    dom: d(),
                    xml: nic.clone(),
                    flags: 1,
                };
                c.call(p::DOMAIN_ATTACH_DEVICE_FLAGS, &a).await
            }
            10 => {
                let a = DomXmlFlags {
                    dom: d(),
                    xml: nic.clone(),
                    flags: 1,
                };
                c.call(p::DOMAIN_DETACH_DEVICE_FLAGS, &a).await
            }
            // 12
            _ => c.call(p::DOMAIN_DESTROY, &Dom { dom: d() }).await,
        };
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        seen.latencies_us.push(us);
        if !matches!(step % 20, 5 | 6 | 8 | 10 | 12) {
            seen.read_latencies_us.push(us);
        }
        if let Err(e) = r {
            seen.errors.push(format!("step {}: {e}", step % 20));
        }
    }
    // Left running when the calls ran out mid-cycle: stop it first.
    let _ = c.call(p::DOMAIN_DESTROY, &Dom { dom: dom.clone() }).await;
    if let Err(e) = c.call(p::DOMAIN_UNDEFINE, &Dom { dom }).await {
        seen.errors.push(format!("undefine: {e}"));
    }
    seen
}

/// A client that opens a read-only connection and sends GET_XML_DESC of a big domain until
/// the daemon stops taking them, never reading a byte. Returns the calls it got in.
fn non_reader(path: String, big: Domain, stop: Arc<AtomicBool>) -> u64 {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&path) else {
        return 0;
    };
    let frame = |proc_: i32, serial: u32, payload: &[u8]| {
        let h = Header {
            prog: REMOTE_PROGRAM,
            vers: 1,
            proc_,
            mtype: MessageType::Call as u32,
            serial,
            status: 0,
        };
        metalvirt::protocol::header::frame(&h, payload)
    };
    let open = to_bytes(&ConnectOpenArgs {
        name: Some("qemu:///system".into()),
        flags: 1,
    });
    if s.write_all(&frame(p::AUTH_LIST, 1, &[])).is_err()
        || s.write_all(&frame(p::CONNECT_OPEN, 2, &open)).is_err()
    {
        return 0;
    }
    // The two replies, then never another read.
    let mut got = 0;
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut bytes = Vec::new();
    while got < 2 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
        got = 0;
        let mut off = 0;
        while bytes.len() >= off + 4 {
            let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            if bytes.len() < off + len {
                break;
            }
            off += len;
            got += 1;
        }
    }
    s.set_write_timeout(Some(Duration::from_millis(200))).ok();
    let args = to_bytes(&DomFlags { dom: big, flags: 0 });
    let mut sent = 0;
    let mut serial = 3;
    while !stop.load(Ordering::Relaxed) {
        match s.write_all(&frame(p::DOMAIN_GET_XML_DESC, serial, &args)) {
            Ok(()) => {
                sent += 1;
                serial += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    sent
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let rss_before = rss_kib(cli.pid).unwrap_or(0);
    let admin = Conn::open(&cli.socket, "qemu:///system").await;

    // The domain the non-readers ask for: a 1 MiB description.
    let big_xml = domain_xml(
        "soak-big",
        65535,
        &format!("<description>{}</description>", "x".repeat(1 << 20)),
    );
    let r = admin
        .call(p::DOMAIN_DEFINE_XML, &Str { s: big_xml })
        .await
        .expect("define the big domain");
    let big = from_bytes::<Dom>(&r).expect("dom").dom;

    // Memory, sampled all along.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), cli.pid);
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Hostile: clients that never read, then a flood of idle read-only connections.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..cli.non_readers {
        let (path, big, stop) = (cli.ro_socket.clone(), big.clone(), stop.clone());
        readers.push(tokio::task::spawn_blocking(move || {
            non_reader(path, big, stop)
        }));
    }
    let mut idle = Vec::new();
    for _ in 0..cli.idle {
        if let Ok(s) = tokio::net::UnixStream::connect(&cli.ro_socket).await {
            idle.push(s);
        }
    }
    // Connections past the read-only cap are closed by the daemon at once.
    let checks = idle.iter_mut().map(|s| async move {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    });
    let refused = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter(|c| *c)
        .count();

    // The well-behaved clients.
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..cli.clients)
        .map(|i| tokio::spawn(well_behaved(cli.clone(), i)))
        .collect();
    let mut lat: Vec<u32> = Vec::new();
    let mut reads: Vec<u32> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for t in tasks {
        let s = t.await.expect("client task");
        lat.extend(s.latencies_us);
        reads.extend(s.read_latencies_us);
        errors.extend(s.errors);
    }
    let wall = t0.elapsed().as_secs_f64();
    let rss_during = peak.load(Ordering::Relaxed);

    // The hostile clients leave; the daemon must give back what they held.
    stop.store(true, Ordering::Relaxed);
    let mut stuck_calls = 0;
    for r in readers {
        stuck_calls += r.await.unwrap_or(0);
    }
    drop(idle);
    let _ = admin.call(p::DOMAIN_UNDEFINE, &Dom { dom: big }).await;
    drop(admin);
    tokio::time::sleep(Duration::from_secs_f64(cli.settle_secs)).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let rss_after = rss_kib(cli.pid).unwrap_or(0);

    lat.sort_unstable();
    reads.sort_unstable();
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    let (r50, r99) = (percentile(&reads, 0.5), percentile(&reads, 0.99));
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "clients": cli.clients, "calls": lat.len(), "errors": errors.len(),
                "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
                "wall_s": wall, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
                "reads_p50_ms": r50, "reads_p99_ms": r99,
                "non_readers": cli.non_readers, "non_reader_calls_written": stuck_calls,
                "idle": cli.idle, "idle_refused": refused,
                "rss_kib_before": rss_before, "rss_kib_peak": rss_during,
                "rss_kib_after": rss_after,
            })
        );
    } else {
        println!("| measure | value |");
        println!("|---|---:|");
        println!(
            "| well-behaved clients × calls | {} × {} = {} calls in {wall:.1} s |",
            cli.clients,
            cli.calls,
            lat.len()
        );
        println!("| errors seen by well-behaved clients | {} |", errors.len());
        println!("| latency, all calls: p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.1} ms |");
        println!("| latency, reads: p50 / p99 | {r50:.2} / {r99:.2} ms |");
        println!(
            "| non-readers (GET_XML_DESC of a 1 MiB domain, never read) | {} (calls written before the daemon stopped reading: {stuck_calls}) |",
            cli.non_readers
        );
        println!(
            "| idle read-only connections | {} ({refused} refused: max_readonly_clients) |",
            cli.idle
        );
        println!(
            "| RSS before / peak during / after | {} / {} / {} MiB |",
            rss_before / 1024,
            rss_during / 1024,
            rss_after / 1024
        );
        for e in errors.iter().take(5) {
            eprintln!("error: {e}");
        }
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
