//! Serial consoles (`virDomainOpenConsole`, `virsh console`): the server's serial line
//! through its BMC (IPMI Serial-over-LAN; the simulated lab's echoing line). One session per
//! domain, as libvirt's character devices: another open fails unless it forces
//! (`VIR_DOMAIN_CONSOLE_FORCE`), which ends the session it takes over.
//!
//! A running domain's `<serial type='tcp'><source mode='bind' host=… service=…/>` (what
//! nova writes for its serial proxy) is served too: metalvirtd listens there for the run and
//! bridges each connection to the same serial line, one client at a time (a new one takes
//! the line over, as QEMU's TCP character device server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{DomainObj, Driver};
use crate::backend::{ConsoleIo, Node};
use crate::domain::DomainDef;
use crate::error::{VirError, VirResult};

/// Session tickets.
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// `VIR_DOMAIN_CONSOLE_FORCE`.
pub const CONSOLE_FORCE: u32 = 1;
/// `VIR_DOMAIN_CONSOLE_SAFE` (accepted: a session is always exclusive here).
pub const CONSOLE_SAFE: u32 = 2;

/// The open sessions: domain → (ticket, how to end it).
pub(super) type Sessions = Arc<Mutex<HashMap<Uuid, (u64, Arc<Notify>)>>>;

/// An open console session. Dropping it frees the domain's console.
pub struct ConsoleSession {
    /// The serial line.
    pub io: ConsoleIo,
    /// Notified when another session takes this one over: it must end.
    pub taken_over: Arc<Notify>,
    /// The run the session belongs to (the domain's id then): it ends with the run.
    run: i32,
    obj: Arc<DomainObj>,
    ticket: u64,
    sessions: Sessions,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsoleSession({}, run {})", self.obj.uuid, self.run)
    }
}

impl ConsoleSession {
    /// Whether the run the session was opened on has ended.
    pub fn run_ended(&self) -> bool {
        self.obj.with(|s| s.id != self.run || !s.active())
    }
}

/// Frees the console of `uuid` if claim `ticket` still holds it.
fn release(sessions: &Sessions, uuid: &Uuid, ticket: u64) {
    let mut m = sessions.lock().unwrap_or_else(|e| e.into_inner());
    if m.get(uuid).is_some_and(|(t, _)| *t == ticket) {
        m.remove(uuid);
    }
}

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        release(&self.sessions, &self.obj.uuid, self.ticket);
    }
}

/// Claims the console of `obj` for a new session (taking it over with `force`), then opens
/// the serial line through the node's BMC. The claim is released when the session drops.
async fn open_session(
    sessions: &Sessions,
    obj: &Arc<DomainObj>,
    node: &Node,
    run: i32,
    force: bool,
) -> VirResult<ConsoleSession> {
    let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
    let taken_over = Arc::new(Notify::new());
    {
        let mut m = sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = m.get(&obj.uuid) {
            if !force {
                return Err(VirError::operation_failed(
                    "Active console session exists for this domain",
                ));
            }
            old.notify_one();
        }
        m.insert(obj.uuid, (ticket, taken_over.clone()));
    }
    match node.power.console().await {
        Ok(io) => Ok(ConsoleSession {
            io,
            taken_over,
            run,
            obj: obj.clone(),
            ticket,
            sessions: sessions.clone(),
        }),
        Err(e) => {
            release(sessions, &obj.uuid, ticket);
            Err(super::backend_error(
                &format!("cannot open the serial console of node {}", node.spec.name),
                &e,
            ))
        }
    }
}

/// The addresses a definition's `<serial type='tcp'>` (and `<console type='tcp'>`) ask
/// metalvirtd to listen on. Only `mode='bind'` with a raw protocol can be served: the
/// line is the server's, reached through its BMC.
pub(super) fn tcp_serials(def: &DomainDef) -> VirResult<Vec<String>> {
    let mut out = Vec::new();
    let Some(devices) = def.root().child("devices") else {
        return Ok(out);
    };
    for el in devices
        .elements()
        .filter(|e| matches!(e.name.as_str(), "serial" | "console"))
        .filter(|e| e.attr("type") == Some("tcp"))
    {
        let src = el.child("source");
        let mode = src.and_then(|s| s.attr("mode")).unwrap_or("connect");
        if mode != "bind" {
            return Err(VirError::config_unsupported(&format!(
                "<{} type='tcp'> with mode='{mode}': metalvirtd can only listen (mode='bind') for a bare-metal server's serial line",
                el.name
            )));
        }
        let protocol = el
            .child("protocol")
            .and_then(|p| p.attr("type"))
            .unwrap_or("raw");
        if protocol != "raw" {
            return Err(VirError::config_unsupported(&format!(
                "<{} type='tcp'> with protocol '{protocol}': only raw is served",
                el.name
            )));
        }
        let host = src.and_then(|s| s.attr("host")).unwrap_or("127.0.0.1");
        let Some(service) = src.and_then(|s| s.attr("service")) else {
            return Err(VirError::xml(&format!(
                "Missing source service attribute for char device <{}>",
                el.name
            )));
        };
        let addr = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]:{service}"),
            Err(_) => format!("{host}:{service}"),
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Listens on `addr` for the run `run` of `obj` and bridges each connection to the serial
/// line; ends (closing the port) when the run does.
async fn serve_tcp_serial(
    sessions: Sessions,
    obj: Arc<DomainObj>,
    node: Node,
    run: i32,
    addr: String,
) {
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(domain = %obj.uuid, %addr, "cannot listen for the serial console: {e}");
            obj.with(|s| {
                s.note(format!(
                    "the serial console listener on {addr} could not start: {e}"
                ))
            });
            return;
        }
    };
    tracing::info!(domain = %obj.uuid, %addr, "serial console listening");
    let ended = || obj.with(|s| s.id != run || !s.active());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if ended() {
            break;
        }
        tokio::select! {
            a = listener.accept() => {
                let Ok((sock, peer)) = a else { continue };
                match open_session(&sessions, &obj, &node, run, true).await {
                    Ok(session) => {
                        tracing::info!(domain = %obj.uuid, %peer, "serial console client connected");
                        tokio::spawn(bridge(sock, session));
                    }
                    Err(e) => tracing::warn!(domain = %obj.uuid, %peer, "serial console refused: {e}"),
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// Copies both ways between a TCP client and the serial line until either ends, another
/// session takes over, or the run ends.
async fn bridge(sock: tokio::net::TcpStream, mut session: ConsoleSession) {
    let (mut rd, mut wr) = sock.into_split();
    let taken_over = session.taken_over.clone();
    let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = session.io.output.read(&mut a) => match r {
                Ok(n) if n > 0 => if wr.write_all(&a[..n]).await.is_err() { break },
                _ => break,
            },
            r = rd.read(&mut b) => match r {
                Ok(n) if n > 0 => if session.io.input.write_all(&b[..n]).await.is_err() { break },
                _ => break,
            },
            _ = taken_over.notified() => break,
            _ = tick.tick() => if session.run_ended() { break },
        }
    }
}

impl Driver {
    /// `virDomainOpenConsole`: `dev` names the console (`serial0`, `console0`; `None`: the
    /// first), which a bare-metal server has one of.
    pub async fn open_console(
        &self,
        obj: &Arc<DomainObj>,
        dev: Option<&str>,
        flags: u32,
    ) -> VirResult<ConsoleSession> {
        VirError::check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, "virDomainOpenConsole")?;
        let (active, run, node) = obj.with(|s| (s.active(), s.id, s.node.clone()));
        if !active {
            return Err(VirError::operation_invalid("domain is not running"));
        }
        if let Some(d) = dev.filter(|d| !matches!(*d, "serial0" | "console0")) {
            return Err(VirError::internal(&format!(
                "cannot find character device {d}"
            )));
        }
        let node = node
            .and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("active domain has no node"))?;
        open_session(&self.consoles, obj, &node, run, flags & CONSOLE_FORCE != 0).await
    }

    /// Starts the TCP listeners a running domain's definition asks for (see
    /// [`tcp_serials`]); each ends with the run.
    pub(super) fn serve_serial_ports(&self, obj: &Arc<DomainObj>, def: &DomainDef) {
        let Ok(addrs) = tcp_serials(def) else {
            return;
        };
        let (run, node) = obj.with(|s| (s.id, s.node.clone()));
        let Some(node) = node.and_then(|n| self.node(&n).cloned()) else {
            return;
        };
        for addr in addrs {
            tokio::spawn(serve_tcp_serial(
                self.consoles.clone(),
                obj.clone(),
                node.clone(),
                run,
                addr,
            ));
        }
    }
}
