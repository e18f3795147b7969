//! The agent: the node's disk and NIC backends, served to controllers over mutual TLS.
//!
//! Every call runs as its own task: when a controller's connection drops mid-call (or its
//! deadline passes), the step still runs to its end on the DPU, so what the DPU holds is
//! always a whole step, which the controller's journal and reconcile know how to undo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rustls::pki_types::CertificateDer;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Json;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::TcpListener;

use super::{AgentV1, Answer, Hello, Pems, WireDisk, MAX_FRAME, PROTOCOL_VERSION, WATCH_HOLD};
use crate::backend::{
    inventory, sim, BackendError, BlockInfo, BlockStats, BootRequest, Disks, ErrorKind, IfStats,
    NicSpec, Nics, Power, PowerReading, Qos, Sensors,
};
use crate::config::{AgentConfig, DisksDriver, NicsDriver};

/// Time a controller gets to finish its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The node's backends as the agent serves them.
pub struct Backends {
    /// The node.
    pub node: String,
    /// Disk mapping.
    pub disks: Arc<dyn Disks>,
    /// NIC plumbing.
    pub nics: Arc<dyn Nics>,
    /// The NIC bridge.
    pub bridge: String,
    /// The NIC functions, as (function, representor).
    pub functions: Vec<(String, String)>,
    /// The node's BMC, when the agent drives it.
    pub power: Option<Arc<dyn Power>>,
}

impl Backends {
    /// Builds the backends the configuration names; parts it leaves out are the simulated
    /// lab's (kept in `state_dir`). Must run inside a tokio runtime (OVSDB sessions start).
    pub fn build(cfg: &AgentConfig) -> Result<Backends, String> {
        let node = cfg.node.clone();
        let spdk = cfg.disks.as_ref().filter(|d| d.driver == DisksDriver::Spdk);
        let ovs = cfg.nics.as_ref().filter(|n| n.driver == NicsDriver::Ovs);
        let sim = if spdk.is_none() || ovs.is_none() {
            tracing::warn!(
                node,
                disks = spdk.is_none(),
                nics = ovs.is_none(),
                "parts of this agent are SIMULATED: no DPU is touched for them"
            );
            let mut v = sim::build_named(
                &cfg.sim,
                &cfg.resolve(&cfg.state_dir),
                std::slice::from_ref(&node),
            )?;
            v.pop()
        } else {
            None
        };
        let disks: Arc<dyn Disks> = match (spdk, &sim) {
            (Some(d), _) => Arc::new(inventory::spdk_disks(&node, d)?),
            (None, Some(s)) => s.clone(),
            (None, None) => unreachable!("a simulated node exists when a part is simulated"),
        };
        let mut sessions = HashMap::new();
        let (nics, bridge, functions): (Arc<dyn Nics>, String, Vec<(String, String)>) =
            match (ovs, &sim) {
                (Some(n), _) => (
                    Arc::new(inventory::ovs_nics(
                        &|p| cfg.resolve(p),
                        &node,
                        n,
                        &mut sessions,
                    )?),
                    n.bridge.clone(),
                    n.pool().map_err(|e| format!("node '{node}': {e}"))?,
                ),
                (None, Some(s)) => (s.clone(), sim::BRIDGE.into(), sim::nic_pool().to_vec()),
                (None, None) => unreachable!("a simulated node exists when a part is simulated"),
            };
        let power = match &cfg.bmc {
            Some(b) => {
                let site = inventory::Site {
                    node: &node,
                    bmc: b,
                    resolve: &|p| cfg.resolve(p),
                };
                let sim_power = match &sim {
                    Some(s) => Some(s.clone() as Arc<dyn Power>),
                    None => sim::build_named(
                        &cfg.sim,
                        &cfg.resolve(&cfg.state_dir),
                        std::slice::from_ref(&node),
                    )?
                    .pop()
                    .map(|s| s as Arc<dyn Power>),
                };
                let (p, desc) = inventory::power(&site, sim_power)?;
                tracing::info!(node, bmc = %desc, "the agent drives the node's BMC");
                Some(p)
            }
            None => None,
        };
        Ok(Backends {
            node,
            disks,
            nics,
            bridge,
            functions,
            power,
        })
    }
}

/// The service a connection is served by.
#[derive(Clone)]
struct Service {
    b: Arc<Backends>,
    boot_id: Arc<str>,
}

/// Runs `f` as a task of its own, so that it finishes even if the call is abandoned.
async fn whole<T, F>(f: F) -> Answer<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Answer<T>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .unwrap_or_else(|e| Err(BackendError::new(format!("the agent's call failed: {e}"))))
}

impl Service {
    /// The BMC, or why there is none.
    fn power(&self) -> Answer<Arc<dyn Power>> {
        self.b.power.clone().ok_or_else(|| {
            BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "the agent of node {} drives no BMC (give it a [bmc] section)",
                    self.b.node
                ),
            )
        })
    }
}

impl AgentV1 for Service {
    async fn hello(self, _: Context, controller_version: u32) -> Hello {
        if controller_version != PROTOCOL_VERSION {
            tracing::warn!(
                controller_version,
                "a controller speaks another agent protocol version than {PROTOCOL_VERSION}"
            );
        }
        Hello {
            version: PROTOCOL_VERSION,
            node: self.b.node.clone(),
            boot_id: self.boot_id.to_string(),
            bridge: self.b.bridge.clone(),
            functions: self.b.functions.clone(),
        }
    }

    async fn ping(self, _: Context) -> u64 {
        crate::uptime_ns()
    }

    async fn disk_accepts(self, _: Context, disk: WireDisk) -> Answer<Option<String>> {
        let spec = disk.into_spec();
        self.b.disks.accepts(&spec).await
    }

    async fn disk_attach(self, _: Context, disk: WireDisk) -> Answer<String> {
        let d = self.b.disks.clone();
        whole(async move { d.attach(&disk.into_spec()).await }).await
    }

    async fn disk_detach(self, _: Context, handle: String) -> Answer<()> {
        let d = self.b.disks.clone();
        whole(async move { d.detach(&handle).await }).await
    }

    async fn disk_list(self, _: Context) -> Answer<Vec<String>> {
        self.b.disks.list().await
    }

    async fn disk_resize(self, _: Context, handle: String, bytes: u64) -> Answer<u64> {
        let d = self.b.disks.clone();
        whole(async move { d.resize(&handle, bytes).await }).await
    }

    async fn disk_info(self, _: Context, handle: String) -> Answer<BlockInfo> {
        self.b.disks.info(&handle).await
    }

    async fn disk_stats(self, _: Context, handle: String) -> Answer<BlockStats> {
        self.b.disks.stats(&handle).await
    }

    async fn disk_set_qos(self, _: Context, handle: String, qos: Qos) -> Answer<()> {
        let d = self.b.disks.clone();
        whole(async move { d.set_qos(&handle, &qos).await }).await
    }

    async fn disk_tidy(self, _: Context) -> Answer<Vec<String>> {
        let d = self.b.disks.clone();
        whole(async move { d.tidy().await }).await
    }

    async fn nic_plug(self, _: Context, nic: NicSpec) -> Answer<String> {
        let n = self.b.nics.clone();
        whole(async move { n.plug(&nic).await }).await
    }

    async fn nic_unplug(self, _: Context, handle: String) -> Answer<()> {
        let n = self.b.nics.clone();
        whole(async move { n.unplug(&handle).await }).await
    }

    async fn nic_list(self, _: Context) -> Answer<Vec<String>> {
        self.b.nics.list().await
    }

    async fn nic_stats(self, _: Context, handle: String) -> Answer<IfStats> {
        self.b.nics.stats(&handle).await
    }

    async fn power_state(self, _: Context) -> Answer<PowerReading> {
        self.power()?.state().await
    }

    async fn power_on(self, _: Context) -> Answer<()> {
        let p = self.power()?;
        whole(async move { p.on().await }).await
    }

    async fn power_off(self, _: Context, hard: bool) -> Answer<()> {
        let p = self.power()?;
        whole(async move { p.off(hard).await }).await
    }

    async fn power_restart(self, _: Context, hard: bool) -> Answer<()> {
        let p = self.power()?;
        whole(async move { p.restart(hard).await }).await
    }

    async fn power_set_boot(self, _: Context, req: BootRequest) -> Answer<()> {
        let p = self.power()?;
        whole(async move { p.set_boot(&req).await }).await
    }

    async fn power_sensors(self, _: Context) -> Answer<Sensors> {
        self.power()?.sensors().await
    }

    async fn power_watch(self, ctx: Context, seen: u64) -> Answer<u64> {
        let Some(mut rx) = self.power()?.power_events() else {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                "this BMC announces no power changes",
            ));
        };
        let hold = ctx
            .deadline
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(Duration::from_millis(500))
            .min(WATCH_HOLD);
        if *rx.borrow_and_update() == seen {
            let _ = tokio::time::timeout(hold, rx.changed()).await;
        }
        let now = *rx.borrow();
        Ok(now)
    }
}

/// The agent's TLS set-up: its certificate, and client certificates required, verified
/// against `ca_file` in the handshake.
pub fn tls_acceptor(cfg: &AgentConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pems = Pems::load("", [&cfg.cert_file, &cfg.key_file, &cfg.ca_file], &|p| {
        cfg.resolve(p)
    })?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(pems.roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("ca_file: {e}"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pems.chain, pems.key)
        .map_err(|e| format!("key_file with cert_file: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The subject of a peer's certificate, for the log.
fn subject(cert: Option<&[CertificateDer<'static>]>) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    cert.and_then(|c| c.first())
        .and_then(|c| X509Certificate::from_der(c.as_ref()).ok())
        .map(|(_, x)| x.subject().to_string())
        .unwrap_or_else(|| "?".into())
}

/// A bound agent, ready to serve.
pub struct Agent {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    service: Service,
}

impl Agent {
    /// Binds the listener (or takes `listener`, e.g. one systemd passed) and loads the TLS
    /// set-up; the backends must already be built.
    pub async fn bind(
        cfg: &AgentConfig,
        backends: Backends,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Agent, String> {
        let acceptor = tls_acceptor(cfg)?;
        let listener = match listener {
            Some(l) => {
                l.set_nonblocking(true)
                    .map_err(|e| format!("the passed listener: {e}"))?;
                TcpListener::from_std(l).map_err(|e| format!("the passed listener: {e}"))?
            }
            None => TcpListener::bind(&cfg.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?,
        };
        Ok(Agent {
            listener,
            acceptor,
            service: Service {
                b: Arc::new(backends),
                boot_id: uuid::Uuid::new_v4().to_string().into(),
            },
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` completes; keeps healing the disk backend meanwhile.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) {
        let b = self.service.b.clone();
        tracing::info!(node = %b.node, listen = ?self.local_addr(), boot_id = %self.service.boot_id, "metalvirt-agent ready");
        let healer = b.disks.heal_interval().map(|every| {
            let (disks, node) = (b.disks.clone(), b.node.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match disks.heal().await {
                        Ok(done) => done
                            .iter()
                            .for_each(|h| tracing::warn!(node, "disk backend healed: {h}")),
                        Err(e) => tracing::debug!(node, "cannot check the disk backend: {e}"),
                    }
                }
            })
        });
        tokio::pin!(stop);
        loop {
            let (tcp, addr) = tokio::select! {
                _ = &mut stop => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, service) = (self.acceptor.clone(), self.service.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%addr, "refused a controller: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%addr, "refused a controller: TLS handshake timed out");
                        return;
                    }
                };
                let who = subject(tls.get_ref().1.peer_certificates());
                tracing::info!(%addr, controller = %who, "controller connected");
                let framed = LengthDelimitedCodec::builder()
                    .max_frame_length(MAX_FRAME)
                    .new_framed(tls);
                let transport = tarpc::serde_transport::new(framed, Json::default());
                BaseChannel::with_defaults(transport)
                    .execute(service.serve())
                    .for_each(|call| async {
                        tokio::spawn(call);
                    })
                    .await;
                tracing::info!(%addr, controller = %who, "controller disconnected");
            });
        }
        if let Some(h) = healer {
            h.abort();
        }
    }
}
