//! The controller's side of an agent: one mutual-TLS connection per agent, kept up by a
//! background task (pings while up, reconnects with backoff while down), and the node's
//! [`Disks`] and [`Nics`] over it.
//!
//! While the agent is down, calls fail at once (within `connect_timeout_s` for the attempt
//! a call makes itself, then from the last attempt's error for a second), with an error
//! naming the node and the agent. Each time the link comes back after a loss it bumps
//! [`AgentLink::reconnects`], and the driver reconciles the node again: the agent may have
//! restarted, and a start it was in the middle of must be undone there.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::tokio_serde::formats::Json;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::sync::{watch, Notify};

use super::{AgentV1Client, Answer, Hello, Pems, WireDisk, MAX_FRAME, PROTOCOL_VERSION};
use crate::backend::{
    BResult, BackendError, BlockInfo, BlockStats, BootRequest, DiskSpec, Disks, ErrorKind, IfStats,
    NicSpec, Nics, Power, PowerReading, Qos, Sensors,
};
use crate::config::AgentLinkConfig;

/// How often a live link is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the link counts as lost.
const PING_LIMIT: Duration = Duration::from_secs(3);
/// After a failed attempt, calls answer its error for this long before trying again (a
/// burst of calls to an agent that is down costs one attempt, not one each).
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Longest pause between the background task's attempts while the agent is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One live connection.
#[derive(Clone)]
struct Conn {
    /// Its sequence number.
    seq: u64,
    client: AgentV1Client,
    /// Set when it is given up: calls in flight on it fail at once.
    lost: watch::Sender<bool>,
    /// Its dispatch task (aborted when it is given up, closing the socket).
    dispatch: tokio::task::AbortHandle,
}

struct LinkState {
    /// The live connection.
    conn: Option<Conn>,
    /// Connections made so far.
    seq: u64,
    /// The agent's last hello.
    hello: Option<Hello>,
    /// The last failed attempt.
    failed: Option<(Instant, BackendError)>,
}

/// One controller-to-agent link.
pub struct AgentLink {
    node: String,
    addr: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    connect_timeout: Duration,
    state: Mutex<LinkState>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Wakes the background task when a connection ends.
    lost: Notify,
    reconnects: watch::Sender<u64>,
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentLink({} at {})", self.node, self.addr)
    }
}

/// The client's TLS set-up: the controller's certificate, the agent's CA.
pub fn tls_connector(
    cfg: &AgentLinkConfig,
    resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pems = Pems::load(
        "agent.",
        [&cfg.cert_file, &cfg.key_file, &cfg.ca_file],
        resolve,
    )?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(pems.roots)
        .with_client_auth_cert(pems.chain, pems.key)
        .map_err(|e| format!("agent.cert_file with agent.key_file: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

fn rpc_error(e: &RpcError) -> ErrorKind {
    match e {
        RpcError::DeadlineExceeded => ErrorKind::Timeout,
        RpcError::Server(_) => ErrorKind::Failed,
        _ => ErrorKind::Unreachable,
    }
}

impl AgentLink {
    /// Starts keeping a link to the agent of `node`. Must run inside a tokio runtime.
    pub fn start(
        node: &str,
        cfg: &AgentLinkConfig,
        resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    ) -> Result<Arc<AgentLink>, String> {
        let server_name = ServerName::try_from(cfg.server_name())
            .map_err(|e| format!("agent.server_name '{}': {e}", cfg.server_name()))?;
        let link = Arc::new(AgentLink {
            node: node.to_string(),
            addr: cfg.address.clone(),
            server_name,
            tls: tls_connector(cfg, resolve)?,
            timeout: Duration::from_secs_f64(cfg.timeout_s),
            connect_timeout: Duration::from_secs_f64(cfg.connect_timeout_s),
            state: Mutex::new(LinkState {
                conn: None,
                seq: 0,
                hello: None,
                failed: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            lost: Notify::new(),
            reconnects: watch::Sender::new(0),
        });
        tokio::spawn(Self::keep(Arc::downgrade(&link)));
        Ok(link)
    }

    /// The agent's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bumped each time the link comes back after a loss.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, kind: ErrorKind, what: impl std::fmt::Display) -> BackendError {
        BackendError::with_kind(
            kind,
            format!("node {}: agent {}: {what}", self.node, self.addr),
        )
    }

    /// Keeps the link: pings it while up, reconnects with backoff while down.
    async fn keep(me: Weak<AgentLink>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let Some(link) = me.upgrade() else { return };
            let live = link.lock().conn.clone();
            match live {
                Some(Conn { seq, client, .. }) => {
                    backoff = Duration::from_millis(250);
                    // (Holding the link while waiting delays its drop by one ping period at
                    // most.)
                    tokio::select! {
                        _ = tokio::time::sleep(PING_EVERY) => {}
                        _ = link.lost.notified() => continue,
                    }
                    let mut ctx = tarpc::context::current();
                    ctx.deadline = Instant::now() + PING_LIMIT;
                    if let Err(e) = client.ping(ctx).await {
                        tracing::warn!(node = %link.node, agent = %link.addr, "agent does not answer: {e}");
                        link.drop_conn(seq);
                    }
                }
                None => {
                    let r = link.connect().await;
                    drop(link);
                    if r.is_err() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Gives up connection `seq` (if it is still the live one): calls in flight on it fail,
    /// its socket closes, and the background task starts reconnecting.
    fn drop_conn(&self, seq: u64) {
        let mut st = self.lock();
        if st.conn.as_ref().is_some_and(|c| c.seq == seq) {
            let c = st.conn.take().expect("checked above");
            drop(st);
            c.lost.send_replace(true);
            c.dispatch.abort();
            self.lost.notify_waiters();
        }
    }

    /// The live connection, connecting if there is none (and the last attempt is not
    /// fresh).
    async fn client(self: &Arc<Self>) -> BResult<Conn> {
        {
            let st = self.lock();
            if let Some(c) = &st.conn {
                return Ok(c.clone());
            }
            if let Some((at, e)) = &st.failed {
                if at.elapsed() < RETRY_AFTER {
                    return Err(e.clone());
                }
            }
        }
        self.connect().await
    }

    /// One connection attempt (or the one another caller just made).
    async fn connect(self: &Arc<Self>) -> BResult<Conn> {
        let _one = self.connecting.lock().await;
        {
            let st = self.lock();
            if let Some(c) = &st.conn {
                return Ok(c.clone());
            }
        }
        let r = tokio::time::timeout(self.connect_timeout, self.handshake()).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(self.err(
                ErrorKind::Unreachable,
                format!(
                    "unreachable: no connection within {:?}",
                    self.connect_timeout
                ),
            )),
        };
        let mut st = self.lock();
        match r {
            Ok((client, dispatch, hello)) => {
                st.seq += 1;
                let seq = st.seq;
                let again = st.hello.is_some();
                let restarted = st
                    .hello
                    .as_ref()
                    .is_some_and(|h| h.boot_id != hello.boot_id);
                let me = Arc::downgrade(self);
                let abort = dispatch.abort_handle();
                tokio::spawn(async move {
                    let _ = dispatch.await;
                    if let Some(link) = me.upgrade() {
                        link.drop_conn(seq);
                    }
                });
                let conn = Conn {
                    seq,
                    client,
                    lost: watch::Sender::new(false),
                    dispatch: abort,
                };
                st.conn = Some(conn.clone());
                st.hello = Some(hello);
                st.failed = None;
                drop(st);
                if again {
                    if restarted {
                        tracing::warn!(node = %self.node, agent = %self.addr, "agent restarted; reconciling the node");
                    } else {
                        tracing::warn!(node = %self.node, agent = %self.addr, "agent reachable again; reconciling the node");
                    }
                    self.reconnects.send_modify(|n| *n += 1);
                } else {
                    tracing::info!(node = %self.node, agent = %self.addr, "connected to the node's agent");
                }
                Ok(conn)
            }
            Err(e) => {
                let first = st.failed.is_none();
                st.failed = Some((Instant::now(), e.clone()));
                drop(st);
                if first {
                    tracing::warn!(node = %self.node, agent = %self.addr, "{e}");
                }
                Err(e)
            }
        }
    }

    async fn handshake(&self) -> BResult<(AgentV1Client, tokio::task::JoinHandle<()>, Hello)> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| self.err(ErrorKind::Unreachable, format!("unreachable: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::InvalidData {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Unreachable
                };
                self.err(kind, format!("TLS handshake failed: {e}"))
            })?;
        let framed = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_framed(tls);
        let transport = tarpc::serde_transport::new(framed, Json::default());
        let new = AgentV1Client::new(tarpc::client::Config::default(), transport);
        let dispatch = new.dispatch;
        let client = new.client;
        let task = tokio::spawn(async move {
            let _ = dispatch.await;
        });
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + self.connect_timeout;
        let hello = match client.hello(ctx, PROTOCOL_VERSION).await {
            Ok(h) => h,
            Err(e) => {
                task.abort();
                return Err(self.err(
                    ErrorKind::Auth,
                    format!("the agent closed the connection before answering ({e}): does it trust this controller's certificate? (its log says why it refused)"),
                ));
            }
        };
        if hello.version != PROTOCOL_VERSION {
            task.abort();
            return Err(self.err(
                ErrorKind::Unsupported,
                format!(
                    "speaks agent protocol {}, this metalvirtd speaks {PROTOCOL_VERSION}: upgrade the older of the two",
                    hello.version
                ),
            ));
        }
        if hello.node != self.node {
            task.abort();
            return Err(self.err(
                ErrorKind::Failed,
                format!(
                    "is the agent of node '{}', not of this node: check [node.agent] address",
                    hello.node
                ),
            ));
        }
        Ok((client, task, hello))
    }

    /// One call through the agent: `what` names it in errors.
    async fn call<T, F, Fut>(self: &Arc<Self>, what: &str, f: F) -> BResult<T>
    where
        F: FnOnce(AgentV1Client, Context) -> Fut,
        Fut: std::future::Future<Output = Result<Answer<T>, RpcError>>,
    {
        let conn = self.client().await?;
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + self.timeout;
        let mut lost = conn.lost.subscribe();
        let r = tokio::select! {
            r = f(conn.client.clone(), ctx) => r,
            _ = lost.wait_for(|l| *l) => {
                return Err(self.err(
                    ErrorKind::Unreachable,
                    format!("connection lost during {what}"),
                ))
            }
        };
        let seq = conn.seq;
        match r {
            Ok(answer) => answer,
            Err(RpcError::DeadlineExceeded) => Err(self.err(
                ErrorKind::Timeout,
                format!("no answer to {what} within {:?}", self.timeout),
            )),
            Err(e) => {
                self.drop_conn(seq);
                Err(self.err(rpc_error(&e), format!("{what} failed: {e}")))
            }
        }
    }
}

/// The node's disks, mapped by its agent.
#[derive(Debug, Clone)]
pub struct AgentDisks(pub Arc<AgentLink>);

/// The node's NICs, plugged by its agent.
#[derive(Debug, Clone)]
pub struct AgentNics(pub Arc<AgentLink>);

#[async_trait]
impl Disks for AgentDisks {
    async fn attach(&self, spec: &DiskSpec) -> BResult<String> {
        let w = WireDisk::of(spec);
        self.0
            .call("disk attach", |c, ctx| async move {
                c.disk_attach(ctx, w).await
            })
            .await
    }

    async fn detach(&self, handle: &str) -> BResult<()> {
        let h = handle.to_string();
        self.0
            .call("disk detach", |c, ctx| async move {
                c.disk_detach(ctx, h).await
            })
            .await
    }

    async fn list(&self) -> BResult<Vec<String>> {
        self.0
            .call("disk list", |c, ctx| async move { c.disk_list(ctx).await })
            .await
    }

    async fn resize(&self, handle: &str, bytes: u64) -> BResult<u64> {
        let h = handle.to_string();
        self.0
            .call("disk resize", |c, ctx| async move {
                c.disk_resize(ctx, h, bytes).await
            })
            .await
    }

    async fn info(&self, handle: &str) -> BResult<BlockInfo> {
        let h = handle.to_string();
        self.0
            .call(
                "disk info",
                |c, ctx| async move { c.disk_info(ctx, h).await },
            )
            .await
    }

    async fn stats(&self, handle: &str) -> BResult<BlockStats> {
        let h = handle.to_string();
        self.0
            .call(
                "disk stats",
                |c, ctx| async move { c.disk_stats(ctx, h).await },
            )
            .await
    }

    async fn set_qos(&self, handle: &str, qos: &Qos) -> BResult<()> {
        let (h, q) = (handle.to_string(), *qos);
        self.0
            .call("disk I/O limits", |c, ctx| async move {
                c.disk_set_qos(ctx, h, q).await
            })
            .await
    }

    async fn accepts(&self, spec: &DiskSpec) -> BResult<Option<String>> {
        let w = WireDisk::of(spec);
        self.0
            .call("disk check", |c, ctx| async move {
                c.disk_accepts(ctx, w).await
            })
            .await
    }

    async fn tidy(&self) -> BResult<Vec<String>> {
        self.0
            .call("disk tidy", |c, ctx| async move { c.disk_tidy(ctx).await })
            .await
    }

    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        Some(self.0.reconnects())
    }
}

#[async_trait]
impl Nics for AgentNics {
    async fn plug(&self, spec: &NicSpec) -> BResult<String> {
        let s = spec.clone();
        self.0
            .call("NIC plug", |c, ctx| async move { c.nic_plug(ctx, s).await })
            .await
    }

    async fn unplug(&self, handle: &str) -> BResult<()> {
        let h = handle.to_string();
        self.0
            .call(
                "NIC unplug",
                |c, ctx| async move { c.nic_unplug(ctx, h).await },
            )
            .await
    }

    async fn list(&self) -> BResult<Vec<String>> {
        self.0
            .call("NIC list", |c, ctx| async move { c.nic_list(ctx).await })
            .await
    }

    async fn stats(&self, handle: &str) -> BResult<IfStats> {
        let h = handle.to_string();
        self.0
            .call(
                "NIC stats",
                |c, ctx| async move { c.nic_stats(ctx, h).await },
            )
            .await
    }

    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        Some(self.0.reconnects())
    }
}

/// The node's BMC, driven by its agent; the power changes the agent's BMC announces are
/// relayed by a long-polling task, so the driver hears of them as if the BMC were local.
pub struct AgentPower {
    link: Arc<AgentLink>,
    events: watch::Sender<u64>,
}

impl std::fmt::Debug for AgentPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentPower({:?})", self.link)
    }
}

impl AgentPower {
    /// Starts relaying the agent's power events. Must run inside a tokio runtime.
    pub fn new(link: Arc<AgentLink>) -> Arc<AgentPower> {
        let p = Arc::new(AgentPower {
            link,
            events: watch::Sender::new(0),
        });
        tokio::spawn(Self::relay(Arc::downgrade(&p)));
        p
    }

    async fn relay(me: Weak<AgentPower>) {
        let mut seen = 0u64;
        loop {
            let Some(p) = me.upgrade() else { return };
            let link = p.link.clone();
            let events = p.events.clone();
            drop(p);
            let r = link
                .call("power watch", |c, ctx| async move {
                    c.power_watch(ctx, seen).await
                })
                .await;
            match r {
                Ok(n) => {
                    if n != seen {
                        seen = n;
                        events.send_modify(|x| *x += 1);
                    }
                }
                // This BMC must be polled: nothing to relay.
                Err(e) if e.kind == ErrorKind::Unsupported => return,
                Err(_) => {
                    // The link is down; once it is back, read the state again (it may have
                    // changed meanwhile).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    seen = u64::MAX;
                }
            }
        }
    }
}

#[async_trait]
impl Power for AgentPower {
    async fn state(&self) -> BResult<PowerReading> {
        self.link
            .call(
                "power state",
                |c, ctx| async move { c.power_state(ctx).await },
            )
            .await
    }

    async fn on(&self) -> BResult<()> {
        self.link
            .call("power on", |c, ctx| async move { c.power_on(ctx).await })
            .await
    }

    async fn off(&self, hard: bool) -> BResult<()> {
        self.link
            .call(
                "power off",
                |c, ctx| async move { c.power_off(ctx, hard).await },
            )
            .await
    }

    async fn restart(&self, hard: bool) -> BResult<()> {
        self.link
            .call("restart", |c, ctx| async move {
                c.power_restart(ctx, hard).await
            })
            .await
    }

    async fn set_boot(&self, req: &BootRequest) -> BResult<()> {
        let r = *req;
        self.link
            .call("boot override", |c, ctx| async move {
                c.power_set_boot(ctx, r).await
            })
            .await
    }

    async fn sensors(&self) -> BResult<Sensors> {
        self.link
            .call(
                "sensors",
                |c, ctx| async move { c.power_sensors(ctx).await },
            )
            .await
    }

    fn power_events(&self) -> Option<watch::Receiver<u64>> {
        Some(self.events.subscribe())
    }
}
