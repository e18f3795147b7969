//! `metalvirtd`: the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use metalvirt::cli::Cli;
use metalvirt::config::{self, Config};
use metalvirt::driver::Driver;
use metalvirt::rpc::listen::{self, Role};
use metalvirt::rpc::server;
use metalvirt::rpc::tls::Gate;
use tokio::signal::unix::{signal, SignalKind};

fn main() {
    let cli = Cli::parse();
    metalvirt::cli::init_logging("metalvirtd");
    metalvirt::uptime_ns();
    let (cfg, file) = match configure(&cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("metalvirtd: {e}");
            std::process::exit(if cli.check_config { 1 } else { 2 });
        }
    };
    if cli.check_config {
        std::process::exit(check_config(&cfg, file.as_deref()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg)) {
        tracing::error!("{e}");
        eprintln!("metalvirtd: {e}");
        std::process::exit(1);
    }
}

/// The configuration: `--config`, else the packaged file when it exists, else the defaults
/// (the simulated lab); then the command line's overrides.
fn configure(cli: &Cli) -> Result<(Config, Option<PathBuf>), String> {
    let default = Path::new(config::DEFAULT_FILE);
    let file = match &cli.config {
        Some(p) => Some(p.clone()),
        None if default.exists() => Some(default.to_path_buf()),
        None => None,
    };
    let mut cfg = match &file {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(n) = cli.sim_nodes {
        cfg.sim.nodes = n;
        cfg.sim_lab = true;
        cfg.nodes.clear();
    }
    if let Some(d) = &cli.socket_dir {
        cfg.socket_dir = d.clone();
        cfg.socket_dir_set = true;
    }
    if let Some(d) = &cli.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(d) = &cli.config_dir {
        cfg.config_dir = d.clone();
    }
    cfg.apply_user_defaults(nix::unistd::getuid().as_raw());
    cfg.listen = cli.listen;
    Ok((cfg, file))
}

/// `--check-config`: what the daemon would refuse at start-up, without contacting any BMC
/// or DPU. Returns the exit status.
fn check_config(cfg: &Config, file: Option<&Path>) -> i32 {
    let name = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no configuration file: the defaults)".into());
    let mut problems = Vec::new();
    // The inventory is built as at start-up (password files, CA bundles, NIC pools), in a
    // runtime that is never run: connections it would open never start.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let nodes = {
        let _g = rt.enter();
        match metalvirt::backend::inventory::build(cfg) {
            Ok(n) => n.len(),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                0
            }
        }
    };
    drop(rt);
    let tls_used = cfg.listen && cfg.listen_tls;
    let tls = if tls_used || cfg.resolve(&cfg.cert_file).exists() {
        match Gate::load(cfg) {
            Ok(_) => "certificate, key and CA valid",
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                "invalid"
            }
        }
    } else {
        "not set up (no --listen, no server certificate)"
    };
    if problems.is_empty() {
        let what = if cfg.nodes.is_empty() && cfg.sim_lab {
            format!("the simulated lab ({nodes} nodes)")
        } else {
            format!("{nodes} nodes")
        };
        println!(
            "{name}: valid: {what}; sockets in {}; TLS: {tls}",
            cfg.socket_dir.display()
        );
        0
    } else {
        for p in problems {
            eprintln!("{p}");
        }
        1
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    metalvirt::persist::ensure_dir(&cfg.state_dir, 0o700)
        .map_err(|e| format!("cannot create {}: {e}", cfg.state_dir.display()))?;
    let activated = listen::activated_sockets()?;
    if activated.is_empty() {
        metalvirt::persist::ensure_dir(&cfg.socket_dir, 0o755)
            .map_err(|e| format!("cannot create {}: {e}", cfg.socket_dir.display()))?;
    }
    let nodes = metalvirt::backend::inventory::build(&cfg)?;
    let listeners = listen::open_all(&cfg, activated)?;
    let tls = if listeners.iter().any(|l| l.role == Role::Tls) {
        Some(Arc::new(Gate::load(&cfg)?))
    } else {
        None
    };
    let driver = Driver::open(cfg, nodes.clone()).await?;
    driver.start_background();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let places: Vec<String> = listeners.iter().map(|l| l.place.clone()).collect();
    let domains = driver.all().len();
    tracing::info!(listen = ?places, domains, "ready");
    listen::notify(&format!(
        "READY=1\nSTATUS=serving {} nodes, {domains} domains",
        nodes.len()
    ));
    server::serve(driver.clone(), listeners, tls, async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        listen::notify("STOPPING=1\nSTATUS=finishing calls in flight");
    })
    .await;
    if let Err(e) = driver.flush().await {
        tracing::error!("cannot write definitions and statuses to their files: {e}");
    }
    // Log out of BMC sessions (Redfish BMCs have few session slots).
    futures::future::join_all(nodes.iter().map(|n| n.power.close())).await;
    Ok(())
}
