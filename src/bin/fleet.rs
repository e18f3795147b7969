//! `metalvirt-fleet`: fleet-scale figures of a libvirt daemon (docs/PERFORMANCE.md, "Fleet
//! scale"). Against metalvirtd on its simulated lab (`--sim-nodes N`) it measures:
//!
//! - defines: N nova-like domains (an RBD disk and an Open vSwitch NIC) from one client;
//! - starts: N starts over `--conns` connections at once, each connection starting its
//!   share one after another (how nova-compute's workers call), wall time against the
//!   perfect overlap (one start's time × starts per connection), and the daemon's CPU time
//!   per start;
//! - the daemon's CPU while everything runs (the power watcher's load) and its RSS;
//! - `virConnectListAllDomains` over the N domains, one call after another;
//! - destroys, as the starts.
//!
//! With `--no-start` only defines and listings run, which is what a daemon without
//! hardware (libvirtd's test driver) can be compared on.
//!
//! Usage: metalvirt-fleet --socket PATH [--name URI] [--pid PID] [--domains N] [--conns C]
//!        [--list-rounds R] [--watch-secs S] [--no-start] [--keep] [--label TEXT] [--json]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metalvirt::loadgen::{rss_kib, CallError, Conn};
use metalvirt::protocol::procs as p;
use metalvirt::protocol::types::*;
use metalvirt::protocol::xdr::from_bytes;

#[derive(Debug, Parser, Clone)]
#[command(name = "metalvirt-fleet")]
struct Cli {
    /// The daemon's read-write unix socket.
    #[arg(long)]
    socket: String,
    /// Name sent in CONNECT_OPEN (`test:///default` for libvirtd's test driver).
    #[arg(long, default_value = "qemu:///system")]
    name: String,
    /// Daemon pid: its CPU time and resident memory are reported.
    #[arg(long)]
    pid: Option<u32>,
    /// Domains.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Connections starting (and destroying) at once.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// ListAllDomains calls made one after another.
    #[arg(long, default_value_t = 50)]
    list_rounds: usize,
    /// Seconds to watch the daemon's CPU with every domain running.
    #[arg(long, default_value_t = 10.0)]
    watch_secs: f64,
    /// Define and list only (no hardware behind the daemon).
    #[arg(long)]
    no_start: bool,
    /// Leave the domains running and defined (to measure a restart over them).
    #[arg(long)]
    keep: bool,
    /// Label for the output.
    #[arg(long, default_value = "daemon")]
    label: String,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// A domain as nova's libvirt driver writes it for a volume-backed instance.
fn domain_xml(i: usize) -> String {
    format!(
        "<domain type='kvm'><name>fleet-{i}</name><memory unit='MiB'>4096</memory><vcpu>2</vcpu>\
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>\
<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>\
<source protocol='rbd' name='volumes/fleet-{i}-root'><host name='10.0.0.1' port='6789'/></source>\
<target dev='vda' bus='virtio'/></disk>\
<interface type='bridge'><mac address='fa:16:3e:{:02x}:{:02x}:{:02x}'/>\
<source bridge='br-int'/><virtualport type='openvswitch'>\
<parameters interfaceid='{}'/></virtualport><model type='virtio'/></interface>\
</devices></domain>",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff,
        uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128)
    )
}

/// CPU time (user + system) of a process, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
}

/// Runs `op` on every domain, `conns` connections at once, each taking its share one after
/// another. Returns the wall time and the longest single operation.
async fn spread<F, Fut>(
    conns: &[Arc<Conn>],
    doms: &Arc<Vec<Domain>>,
    what: &'static str,
    op: F,
) -> (Duration, Duration)
where
    F: Fn(Arc<Conn>, Domain) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<u8>, CallError>> + Send,
{
    let t = Instant::now();
    let tasks: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let (c, doms, op) = (c.clone(), doms.clone(), op.clone());
            let n = conns.len();
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                for d in doms.iter().skip(ci).step_by(n) {
                    let t = Instant::now();
                    if let Err(e) = op(c.clone(), d.clone()).await {
                        panic!("{what} of {}: {e}", d.name);
                    }
                    longest = longest.max(t.elapsed());
                }
                longest
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    for t in tasks {
        longest = longest.max(t.await.expect("worker"));
    }
    (t.elapsed(), longest)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let cpu = || cli.pid.and_then(cpu_time).unwrap_or_default();
    let rss = || cli.pid.and_then(rss_kib).unwrap_or(0);
    let admin = Conn::open(&cli.socket, &cli.name).await;
    let mut conns = Vec::new();
    for _ in 0..cli.conns.max(1) {
        conns.push(Conn::open(&cli.socket, &cli.name).await);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| {
        if !cli.json {
            println!("{}: {k} = {v}", cli.label);
        }
        out.push((k.to_string(), v));
    };
    put("domains", cli.domains.to_string());
    put("rss_empty_kib", rss().to_string());

    let t = Instant::now();
    let mut doms = Vec::with_capacity(cli.domains);
    for i in 0..cli.domains {
        let r = admin
            .call(p::DOMAIN_DEFINE_XML, &Str { s: domain_xml(i) })
            .await
            .unwrap_or_else(|e| panic!("define fleet-{i}: {e}"));
        doms.push(from_bytes::<Dom>(&r).expect("dom").dom);
    }
    put("define_s", format!("{:.2}", t.elapsed().as_secs_f64()));
    let doms = Arc::new(doms);

    let list = |rounds: usize| {
        let admin = admin.clone();
        async move {
            let t = Instant::now();
            let mut seen = 0;
            for _ in 0..rounds {
                let r = admin
                    .call(
                        p::CONNECT_LIST_ALL_DOMAINS,
                        &ListAllDomainsArgs {
                            need_results: 1,
                            flags: 0,
                        },
                    )
                    .await
                    .expect("list all");
                seen = from_bytes::<ListAllDomainsRet>(&r).expect("list").ret;
            }
            (rounds as f64 / t.elapsed().as_secs_f64(), seen)
        }
    };
    let (rate, seen) = list(cli.list_rounds).await;
    put("list_all_per_s", format!("{rate:.1}"));
    put("list_all_domains_seen", seen.to_string());

    if !cli.no_start {
        // One start alone: the unit of the perfect overlap.
        let one = doms[0].clone();
        let t = Instant::now();
        admin
            .call(p::DOMAIN_CREATE, &Dom { dom: one.clone() })
            .await
            .expect("first start");
        let single = t.elapsed();
        admin
            .call(p::DOMAIN_DESTROY, &Dom { dom: one })
            .await
            .expect("first destroy");
        put("one_start_s", format!("{:.3}", single.as_secs_f64()));
        let per_conn = cli.domains.div_ceil(conns.len());
        let perfect = single * per_conn as u32;
        put("perfect_overlap_s", format!("{:.2}", perfect.as_secs_f64()));

        let phase = |what: &'static str, proc_: i32| {
            let (conns, doms) = (&conns, &doms);
            async move {
                let c0 = cpu();
                let (wall, longest) = spread(conns, doms, what, move |c, dom| async move {
                    c.call(proc_, &Dom { dom }).await
                })
                .await;
                let used = cpu().saturating_sub(c0);
                [
                    ("all_s", format!("{:.2}", wall.as_secs_f64())),
                    (
                        "vs_perfect",
                        format!("{:.2}", wall.as_secs_f64() / perfect.as_secs_f64()),
                    ),
                    ("longest_s", format!("{:.3}", longest.as_secs_f64())),
                    (
                        "cpu_us_each",
                        format!("{:.0}", used.as_micros() as f64 / doms.len() as f64),
                    ),
                ]
            }
        };
        for (k, v) in phase("start", p::DOMAIN_CREATE).await {
            put(&format!("start_{k}"), v);
        }
        put("rss_running_kib", rss().to_string());

        let (rate, seen) = list(cli.list_rounds).await;
        put("list_all_running_per_s", format!("{rate:.1}"));
        put("list_all_running_seen", seen.to_string());

        let c0 = cpu();
        tokio::time::sleep(Duration::from_secs_f64(cli.watch_secs)).await;
        let used = cpu().saturating_sub(c0);
        put(
            "watch_cpu_percent",
            format!("{:.2}", 100.0 * used.as_secs_f64() / cli.watch_secs),
        );

        if cli.keep {
            print_json(&cli, &out);
            return;
        }
        for (k, v) in phase("destroy", p::DOMAIN_DESTROY).await {
            put(&format!("destroy_{k}"), v);
        }
    }

    for d in doms.iter() {
        admin
            .call(p::DOMAIN_UNDEFINE, &Dom { dom: d.clone() })
            .await
            .unwrap_or_else(|e| panic!("undefine {}: {e}", d.name));
    }
    print_json(&cli, &out);
}

fn print_json(cli: &Cli, out: &[(String, String)]) {
    if cli.json {
        let fields: Vec<String> = out
            .iter()
            .map(|(k, v)| match v.parse::<f64>() {
                Ok(_) => format!("\"{k}\":{v}"),
                Err(_) => format!("\"{k}\":\"{v}\""),
            })
            .collect();
        println!(
            "{{\"label\":\"{}\",{}}}",
            cli.label.replace('"', ""),
            fields.join(",")
        );
    }
}
