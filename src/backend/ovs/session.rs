//! One OVSDB session per switch: connects, monitors into the replica, reconnects with
//! backoff, and runs transactions for the NIC backend.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::ovsdb::{Ovsdb, OvsdbError, UpdateFn};
use super::*;
use crate::backend::{BResult, BackendError, ErrorKind};

pub(super) struct SessionState {
    pub(super) conn: Option<Arc<Ovsdb>>,
    pub(super) replica: Replica,
    pub(super) last_error: String,
}

/// One OVSDB server: a connection kept up with backoff and the replica its monitor feeds.
pub struct Session {
    pub(super) addr: String,
    pub(super) timeout: Duration,
    /// For `ssl:` addresses.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) state: Mutex<SessionState>,
    pub(super) changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.addr)
    }
}

pub(super) fn classify(e: &OvsdbError) -> ErrorKind {
    match e {
        OvsdbError::Connect { .. } | OvsdbError::Disconnected => ErrorKind::Unreachable,
        OvsdbError::Timeout { .. } => ErrorKind::Timeout,
        _ => ErrorKind::Failed,
    }
}

impl Session {
    /// Starts keeping a connection to `addr` (`unix:/path` or `tcp:host:port`); `timeout`
    /// bounds each call and each connection attempt. Must run inside a tokio runtime.
    pub fn start(
        addr: &str,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            addr: addr.to_string(),
            timeout,
            tls,
            state: Mutex::new(SessionState {
                conn: None,
                replica: Replica::default(),
                last_error: "not connected yet".into(),
            }),
            changed: watch::Sender::new(0),
        });
        tokio::spawn(Self::run(Arc::downgrade(&s)));
        s
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn run(weak: Weak<Session>) {
        let mut backoff = BACKOFF_FIRST;
        let mut was_up = false;
        let mut failures = 0u32;
        loop {
            let Some(s) = weak.upgrade() else { return };
            let w = weak.clone();
            let on_update: UpdateFn = Arc::new(move |_mon, updates| {
                if let Some(s) = w.upgrade() {
                    s.lock().replica.apply(updates);
                    s.bump();
                }
            });
            // The monitor's initial contents rebuild the replica from nothing.
            s.lock().replica = Replica::default();
            let up = match Ovsdb::connect_with(&s.addr, s.timeout, Some(on_update), s.tls.as_ref())
                .await
            {
                Ok(c) => {
                    let c = Arc::new(c);
                    match c.monitor(DB, json!("metalvirt"), monitor_requests()).await {
                        Ok(()) => Some(c),
                        Err(e) => {
                            s.lock().last_error = e.to_string();
                            None
                        }
                    }
                }
                Err(e) => {
                    s.lock().last_error = e.to_string();
                    None
                }
            };
            match up {
                Some(c) => {
                    if was_up || failures > 0 {
                        tracing::warn!(ovsdb = %s.addr, "OVSDB connection re-established");
                    } else {
                        tracing::info!(ovsdb = %s.addr, "connected to OVSDB");
                    }
                    s.lock().conn = Some(c.clone());
                    s.bump();
                    drop(s);
                    c.closed().await;
                    let Some(s) = weak.upgrade() else { return };
                    {
                        let mut st = s.lock();
                        st.conn = None;
                        st.last_error = "connection lost".into();
                    }
                    s.bump();
                    tracing::warn!(ovsdb = %s.addr, "OVSDB connection lost; reconnecting");
                    was_up = true;
                    failures = 0;
                    backoff = BACKOFF_FIRST;
                }
                None => {
                    failures += 1;
                    let err = s.lock().last_error.clone();
                    if failures == 1 {
                        tracing::warn!(ovsdb = %s.addr, "cannot reach OVSDB: {err}; retrying");
                    } else {
                        tracing::debug!(ovsdb = %s.addr, failures, "cannot reach OVSDB: {err}");
                    }
                    drop(s);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The live connection, waiting for one up to the call time limit.
    pub(super) async fn conn(&self) -> BResult<Arc<Ovsdb>> {
        let deadline = Instant::now() + self.timeout;
        let r = self
            .wait_until(deadline, |st| st.conn.clone().filter(|c| !c.is_closed()))
            .await;
        r.ok_or_else(|| {
            BackendError::with_kind(
                ErrorKind::Unreachable,
                format!(
                    "OVSDB at {} is unreachable: {}",
                    self.addr,
                    self.lock().last_error
                ),
            )
        })
    }

    /// Waits until `f` finds something in the state, or the deadline passes.
    pub(super) async fn wait_until<T>(
        &self,
        deadline: Instant,
        f: impl Fn(&SessionState) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = f(&self.lock()) {
                return Some(v);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(left, rx.changed()).await.is_err() {
                return f(&self.lock());
            }
        }
    }

    pub(super) fn view<T>(&self, f: impl FnOnce(&Replica) -> T) -> T {
        f(&self.lock().replica)
    }

    /// A transaction on the Open_vSwitch database.
    pub(super) async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, BackendError> {
        let c = self.conn().await?;
        c.transact(DB, ops).await.map_err(|e| {
            BackendError::with_kind(classify(&e), format!("OVSDB at {}: {e}", self.addr))
        })
    }

    pub(super) async fn transact_raw(
        &self,
        ops: Vec<Value>,
    ) -> BResult<Result<Vec<Value>, OvsdbError>> {
        let c = self.conn().await?;
        Ok(c.transact(DB, ops).await)
    }
}
