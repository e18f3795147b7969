//! `metalvirt-agent`: runs on a node's DPU and serves that DPU's disks (SPDK) and NICs (Open
//! vSwitch) to a controller metalvirtd over mutual TLS. See `backend::agent`.

use std::path::PathBuf;

use clap::Parser;
use metalvirt::backend::agent::server::{Agent, Backends};
use metalvirt::config::AgentConfig;

/// Serves this DPU's disks and NICs to a metalvirtd controller (tarpc over mutual TLS).
#[derive(Debug, Parser)]
#[command(name = "metalvirt-agent", version)]
struct Cli {
    /// The agent's configuration file.
    #[arg(
        long,
        short = 'f',
        default_value = "/etc/metalvirt/metalvirt-agent.toml"
    )]
    config: PathBuf,
    /// Checks the configuration (files, certificates, NIC pool) and exits: 0 when it is
    /// usable.
    #[arg(long)]
    check_config: bool,
}

fn main() {
    let cli = Cli::parse();
    metalvirt::cli::init_logging("metalvirt-agent");
    metalvirt::uptime_ns();
    let cfg = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("metalvirt-agent: {e}");
            std::process::exit(1);
        }
    };
    if cli.check_config {
        std::process::exit(check_config(&cfg, &cli));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(cfg));
    drop(rt);
    std::process::exit(code);
}

async fn run(cfg: AgentConfig) -> i32 {
    let fail = |e: String| {
        eprintln!("metalvirt-agent: {e}");
        tracing::error!("{e}");
        1
    };
    // A listener systemd passed (socket activation) is taken instead of `listen`.
    let passed = match metalvirt::rpc::listen::activated_sockets() {
        Ok(mut v) if !v.is_empty() => Some(std::net::TcpListener::from(v.remove(0).1)),
        Ok(_) => None,
        Err(e) => return fail(e),
    };
    let backends = match Backends::build(&cfg) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let agent = match Agent::bind(&cfg, backends, passed).await {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    metalvirt::rpc::listen::notify("READY=1");
    agent.serve(stop_signal()).await;
    metalvirt::rpc::listen::notify("STOPPING=1");
    tracing::info!("metalvirt-agent stopped");
    0
}

/// Checks the configuration as start-up would (certificates, backends, NIC pool), in a
/// runtime that never runs: no connection is opened.
fn check_config(cfg: &AgentConfig, cli: &Cli) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let _g = rt.enter();
    let checked = metalvirt::backend::agent::server::tls_acceptor(cfg)
        .and_then(|_| Backends::build(cfg).map(|_| ()));
    match checked {
        Ok(()) => {
            println!("{}: valid (node {})", cli.config.display(), cfg.node);
            0
        }
        Err(e) => {
            eprintln!("metalvirt-agent: {}: {e}", cli.config.display());
            1
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
