//! Serial consoles (`virDomainOpenConsole`, `virsh console`): the server's serial line
//! through its BMC (IPMI Serial-over-LAN; the simulated lab's echoing line). One session per
//! domain, as libvirt's character devices: another open fails unless it forces
//! (`VIR_DOMAIN_CONSOLE_FORCE`), which ends the session it takes over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

use super::{DomainObj, Driver};
use crate::backend::ConsoleIo;
use crate::error::{VirError, VirResult};

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

impl Drop for ConsoleSession {
    fn drop(&mut self) {
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&self.obj.uuid)
            .is_some_and(|(t, _)| *t == self.ticket)
        {
            m.remove(&self.obj.uuid);
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
        // Claimed before the BMC is asked, so two opens cannot both get through.
        let ticket = self
            .next_console
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let taken_over = Arc::new(Notify::new());
        {
            let mut m = self.consoles.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, old)) = m.get(&obj.uuid) {
                if flags & CONSOLE_FORCE == 0 {
                    return Err(VirError::operation_failed(
                        "Active console session exists for this domain",
                    ));
                }
                old.notify_one();
            }
            m.insert(obj.uuid, (ticket, taken_over.clone()));
        }
        let session = |io| ConsoleSession {
            io,
            taken_over: taken_over.clone(),
            run,
            obj: obj.clone(),
            ticket,
            sessions: self.consoles.clone(),
        };
        match node.power.console().await {
            Ok(io) => Ok(session(io)),
            Err(e) => {
                // Frees the claim (the session's drop does it).
                drop(session(ConsoleIo {
                    output: Box::new(tokio::io::empty()),
                    input: Box::new(tokio::io::sink()),
                }));
                Err(super::backend_error(
                    &format!("cannot open the serial console of node {}", node.spec.name),
                    &e,
                ))
            }
        }
    }
}
