//! `metalvirtd`: the daemon.

use std::path::PathBuf;

use clap::Parser;
use metalvirt::config::Config;
use metalvirt::driver::Driver;
use metalvirt::rpc::server::{self, RO_SOCKET, RW_SOCKET};
use tokio::signal::unix::{signal, SignalKind};

/// Serves bare-metal servers as libvirt domains over the libvirt remote protocol.
///
/// With no configuration it runs the built-in SIMULATED lab (no real hardware is touched).
#[derive(Debug, Parser)]
#[command(name = "metalvirtd", version)]
struct Cli {
    /// TOML configuration file (see packaging/metalvirtd.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of simulated nodes in the built-in lab.
    #[arg(long)]
    sim_nodes: Option<usize>,
    /// Directory for the sockets `libvirt-sock` and `libvirt-sock-ro`.
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// Directory for live state (must survive daemon restarts).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory for persistent domain definitions.
    #[arg(long)]
    config_dir: Option<PathBuf>,
}

fn main() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `METALVIRT_LOG` takes directives like `info` or `warn,metalvirt::driver=debug`.
    let spec = std::env::var("METALVIRT_LOG").unwrap_or_else(|_| "info".into());
    let filter: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("metalvirtd: bad METALVIRT_LOG '{spec}': {e}; using info");
        "info".parse().expect("static directive")
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person at a terminal, never into journald or a file.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    metalvirt::uptime_ns();
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("metalvirtd: {e}");
                std::process::exit(2);
            }
        },
        None => Config::default(),
    };
    if let Some(n) = cli.sim_nodes {
        cfg.sim.nodes = n;
    }
    if let Some(d) = cli.socket_dir {
        cfg.socket_dir = d;
    }
    if let Some(d) = cli.state_dir {
        cfg.state_dir = d;
    }
    if let Some(d) = cli.config_dir {
        cfg.config_dir = d;
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

async fn run(cfg: Config) -> Result<(), String> {
    metalvirt::persist::ensure_dir(&cfg.socket_dir, 0o755)
        .map_err(|e| format!("cannot create {}: {e}", cfg.socket_dir.display()))?;
    metalvirt::persist::ensure_dir(&cfg.state_dir, 0o700)
        .map_err(|e| format!("cannot create {}: {e}", cfg.state_dir.display()))?;
    let nodes = metalvirt::backend::inventory::build(&cfg)?;
    let rw_path = cfg.socket_dir.join(RW_SOCKET);
    let ro_path = cfg.socket_dir.join(RO_SOCKET);
    let rw = server::bind(&rw_path, cfg.rw_socket_mode)
        .map_err(|e| format!("cannot listen on {}: {e}", rw_path.display()))?;
    let ro = server::bind(&ro_path, cfg.ro_socket_mode)
        .map_err(|e| format!("cannot listen on {}: {e}", ro_path.display()))?;
    let driver = Driver::open(cfg, nodes.clone()).await?;
    driver.start_background();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tracing::info!(socket = %rw_path.display(), ro_socket = %ro_path.display(), domains = driver.all().len(), "ready");
    server::serve(driver, rw, ro, vec![rw_path, ro_path], async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
    .await;
    // Log out of BMC sessions (Redfish BMCs have few session slots).
    futures::future::join_all(nodes.iter().map(|n| n.power.close())).await;
    Ok(())
}
