//! NIC plumbing on a DPU's Open vSwitch: each node has a pool of host-facing NIC functions
//! (VFs/SFs) whose representors live in the DPU's OVS. Plugging a NIC takes a free function,
//! optionally programs its MAC, and adds its representor to the bridge with the
//! `external_ids` Neutron/OVN bind by (`iface-id`, `attached-mac`, `iface-status`, `vm-uuid`)
//! plus metalvirt's ownership keys, all in one OVSDB transaction.
//!
//! A [`Session`] keeps one connection per OVSDB server (shared by the nodes naming it),
//! reconnecting with backoff, and a replica of the Bridge/Port/Interface rows and the root's
//! `cur_cfg` fed by an RFC 7047 `monitor`. Reads (which function is free, which port a handle
//! is, whether ovs-vswitchd gave it an ofport or ovn-controller installed it) are answered from
//! the replica; only changes go to the server. The replica is replaced on every reconnect, so
//! what the daemon believes is always what the server held at the last update.

pub mod ovsdb;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::watch;

use self::ovsdb::{Ovsdb, OvsdbError, UpdateFn};
use super::{BResult, BackendError, ErrorKind, IfStats, NicSpec, Nics};

const DB: &str = "Open_vSwitch";
/// Ownership key: the node a port was plugged for.
pub const KEY_NODE: &str = "metalvirt-node";
/// Ownership key: the domain (uuid) a port belongs to.
pub const KEY_DOMAIN: &str = "metalvirt-domain";
/// Ownership key: the driver's handle of the NIC.
pub const KEY_HANDLE: &str = "metalvirt-handle";

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

// ------------------------------------------------------------------ OVSDB values

/// The members of an OVSDB set (a bare atom is a set of one).
fn atoms(v: &Value) -> &[Value] {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items,
        Some([tag, _]) if tag == "uuid" || tag == "named-uuid" => std::slice::from_ref(v),
        Some(_) => &[],
        None => std::slice::from_ref(v),
    }
}

fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(u)]) if tag == "uuid" => Some(u.clone()),
        _ => None,
    }
}

fn uuids(v: &Value) -> Vec<String> {
    atoms(v).iter().filter_map(uuid_of).collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some([tag, Value::Array(pairs)]) = v.as_array().map(Vec::as_slice) {
        if tag == "map" {
            for p in pairs {
                if let Some([Value::String(k), Value::String(v)]) = p.as_array().map(Vec::as_slice)
                {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

fn ovs_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

// ------------------------------------------------------------------ replica

#[derive(Debug, Clone, Default)]
struct Iface {
    name: String,
    ofport: Option<i64>,
    error: Option<String>,
    external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Port {
    interfaces: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Bridge {
    name: String,
    ports: Vec<String>,
}

/// The rows NIC plumbing reads, as the server last reported them.
#[derive(Debug, Default)]
struct Replica {
    ifaces: HashMap<String, Iface>,
    ports: HashMap<String, Port>,
    bridges: HashMap<String, Bridge>,
    cur_cfg: i64,
}

impl Replica {
    fn apply(&mut self, updates: &Value) {
        let Some(tables) = updates.as_object() else {
            return;
        };
        for (table, rows) in tables {
            let Some(rows) = rows.as_object() else {
                continue;
            };
            for (uuid, change) in rows {
                let new = change.get("new").filter(|n| n.is_object());
                match (table.as_str(), new) {
                    ("Interface", None) => {
                        self.ifaces.remove(uuid);
                    }
                    ("Interface", Some(n)) => {
                        let iface = Iface {
                            name: n["name"].as_str().unwrap_or("").to_string(),
                            ofport: atoms(&n["ofport"]).first().and_then(Value::as_i64),
                            error: atoms(&n["error"])
                                .first()
                                .and_then(Value::as_str)
                                .map(str::to_string),
                            external_ids: string_map(&n["external_ids"]),
                        };
                        self.ifaces.insert(uuid.clone(), iface);
                    }
                    ("Port", None) => {
                        self.ports.remove(uuid);
                    }
                    ("Port", Some(n)) => {
                        let port = Port {
                            interfaces: uuids(&n["interfaces"]),
                        };
                        self.ports.insert(uuid.clone(), port);
                    }
                    ("Bridge", None) => {
                        self.bridges.remove(uuid);
                    }
                    ("Bridge", Some(n)) => {
                        let br = Bridge {
                            name: n["name"].as_str().unwrap_or("").to_string(),
                            ports: uuids(&n["ports"]),
                        };
                        self.bridges.insert(uuid.clone(), br);
                    }
                    ("Open_vSwitch", Some(n)) => {
                        self.cur_cfg = n["cur_cfg"].as_i64().unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The interface a node's handle was plugged as: (uuid, row).
    fn by_handle(&self, node: &str, handle: &str) -> Option<(&String, &Iface)> {
        self.ifaces.iter().find(|(_, i)| {
            i.external_ids.get(KEY_HANDLE).map(String::as_str) == Some(handle)
                && i.external_ids.get(KEY_NODE).map(String::as_str) == Some(node)
        })
    }

    fn has_iface_named(&self, name: &str) -> bool {
        self.ifaces.values().any(|i| i.name == name)
    }

    /// Port and bridge holding an interface.
    fn port_of(&self, iface: &str) -> Option<(String, Option<String>)> {
        let (port, _) = self
            .ports
            .iter()
            .find(|(_, p)| p.interfaces.iter().any(|i| i == iface))?;
        let bridge = self
            .bridges
            .iter()
            .find(|(_, b)| b.ports.contains(port))
            .map(|(u, _)| u.clone());
        Some((port.clone(), bridge))
    }
}

fn monitor_requests() -> Value {
    json!({
        "Interface": {"columns": ["name", "ofport", "error", "external_ids"]},
        "Port": {"columns": ["interfaces"]},
        "Bridge": {"columns": ["name", "ports"]},
        "Open_vSwitch": {"columns": ["cur_cfg"]},
    })
}

// ------------------------------------------------------------------ session

struct SessionState {
    conn: Option<Arc<Ovsdb>>,
    replica: Replica,
    last_error: String,
}

/// One OVSDB server: a connection kept up with backoff and the replica its monitor feeds.
pub struct Session {
    addr: String,
    timeout: Duration,
    /// For `ssl:` addresses.
    tls: Option<Arc<rustls::ClientConfig>>,
    state: Mutex<SessionState>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.addr)
    }
}

fn classify(e: &OvsdbError) -> ErrorKind {
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
    async fn conn(&self) -> BResult<Arc<Ovsdb>> {
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
    async fn wait_until<T>(
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

    fn view<T>(&self, f: impl FnOnce(&Replica) -> T) -> T {
        f(&self.lock().replica)
    }

    /// A transaction on the Open_vSwitch database.
    async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, BackendError> {
        let c = self.conn().await?;
        c.transact(DB, ops).await.map_err(|e| {
            BackendError::with_kind(classify(&e), format!("OVSDB at {}: {e}", self.addr))
        })
    }

    async fn transact_raw(&self, ops: Vec<Value>) -> BResult<Result<Vec<Value>, OvsdbError>> {
        let c = self.conn().await?;
        Ok(c.transact(DB, ops).await)
    }
}

// ------------------------------------------------------------------ the NIC backend

/// What a plug waits for before it reports success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The transaction's commit.
    Commit,
    /// ovs-vswitchd giving the interface an OpenFlow port.
    Ofport,
    /// ovn-controller marking the interface `ovn-installed=true` (flows installed).
    OvnInstalled,
}

/// One host-facing NIC function and its representor on the DPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The function as the host/DPU tooling names it (for the MAC step).
    pub function: String,
    /// Its representor: the OVS port name.
    pub representor: String,
}

/// Settings of one node's NIC plumbing.
#[derive(Debug, Clone)]
pub struct OvsSettings {
    /// The node.
    pub node: String,
    /// Bridge for interfaces that name none (`type='ethernet'`).
    pub bridge: String,
    /// The pool, in the order functions are handed out.
    pub functions: Vec<Function>,
    /// OVS Interface `type` of the representors ("" = a system netdev).
    pub interface_type: String,
    /// What a plug waits for.
    pub wait: WaitFor,
    /// How long a plug may wait for it.
    pub plug_timeout: Duration,
    /// MAC programming command (argv; `{mac}`, `{function}`, `{representor}`, `{node}`
    /// replaced), run before the port is added.
    pub mac_command: Option<Vec<String>>,
    /// MAC programming by writing the MAC to this file (same placeholders).
    pub mac_sysfs: Option<String>,
    /// Time limit of the MAC step.
    pub step_timeout: Duration,
}

/// A node's NICs, plugged into its DPU's Open vSwitch.
pub struct OvsNics {
    s: OvsSettings,
    session: Arc<Session>,
    /// Functions taken by plugs in flight (handle → representor): not yet in the replica.
    taken: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for OvsNics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OvsNics({} @ {})", self.s.node, self.session.addr)
    }
}

fn fill(template: &str, spec: &NicSpec, f: &Function, node: &str) -> String {
    template
        .replace("{mac}", &spec.mac)
        .replace("{function}", &f.function)
        .replace("{representor}", &f.representor)
        .replace("{node}", node)
}

impl OvsNics {
    /// The NICs of one node, on a session to its DPU's OVSDB.
    pub fn new(s: OvsSettings, session: Arc<Session>) -> OvsNics {
        OvsNics {
            s,
            session,
            taken: Mutex::new(HashMap::new()),
        }
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, msg: impl std::fmt::Display) -> BackendError {
        BackendError::new(format!(
            "{msg} (node {}, OVSDB {})",
            self.s.node, self.session.addr
        ))
    }

    /// Takes a free function for `handle`: the preferred one when free, else the first free.
    /// `skip` are representors found taken by someone else meanwhile; `present`, when given,
    /// are the Interface names the server holds (else the replica's).
    fn take(
        &self,
        handle: &str,
        prefer: Option<&str>,
        skip: &[String],
        present: Option<&HashSet<String>>,
    ) -> BResult<Function> {
        let mut taken = self.taken();
        let free = |f: &&Function| {
            !skip.contains(&f.representor)
                && !taken
                    .iter()
                    .any(|(h, r)| h != handle && *r == f.representor)
                && !match present {
                    Some(p) => p.contains(&f.representor),
                    None => self.session.view(|r| r.has_iface_named(&f.representor)),
                }
        };
        let pick = prefer
            .and_then(|p| self.s.functions.iter().find(|f| f.representor == p))
            .filter(free)
            .or_else(|| self.s.functions.iter().find(free))
            .cloned()
            .ok_or_else(|| {
                BackendError::new(format!(
                    "no free NIC function on node {} (all {} in use)",
                    self.s.node,
                    self.s.functions.len()
                ))
            })?;
        taken.insert(handle.to_string(), pick.representor.clone());
        Ok(pick)
    }

    /// The names of the Interfaces the server holds now.
    async fn present_names(&self) -> BResult<HashSet<String>> {
        let res = self
            .session
            .transact(vec![
                json!({"op": "select", "table": "Interface", "where": [], "columns": ["name"]}),
            ])
            .await?;
        Ok(res[0]["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect())
    }

    async fn program_mac(&self, spec: &NicSpec, f: &Function) -> BResult<()> {
        if let Some(path) = &self.s.mac_sysfs {
            let path = fill(path, spec, f, &self.s.node);
            tokio::fs::write(&path, format!("{}\n", spec.mac))
                .await
                .map_err(|e| {
                    self.fail(format_args!(
                        "cannot program MAC {} of {} through {path}: {e}",
                        spec.mac, f.function
                    ))
                })?;
        }
        if let Some(argv) = &self.s.mac_command {
            let argv: Vec<String> = argv
                .iter()
                .map(|a| fill(a, spec, f, &self.s.node))
                .collect();
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = tokio::time::timeout(self.s.step_timeout, cmd.output())
                .await
                .map_err(|_| {
                    BackendError::with_kind(
                        ErrorKind::Timeout,
                        format!(
                            "MAC programming of {} ({}) took longer than {:?} on node {}",
                            f.function, argv[0], self.s.step_timeout, self.s.node
                        ),
                    )
                })?
                .map_err(|e| self.fail(format_args!("cannot run {}: {e}", argv[0])))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(self.fail(format_args!(
                    "MAC programming of {} failed ({}): {}",
                    f.function,
                    out.status,
                    err.trim()
                )));
            }
        }
        Ok(())
    }

    fn add_ops(&self, spec: &NicSpec, f: &Function, bridge: &str) -> Vec<Value> {
        let iface_id = spec
            .interface_id
            .clone()
            .unwrap_or_else(|| spec.handle.clone());
        let ids = ovs_map([
            ("iface-id", iface_id.as_str()),
            ("attached-mac", spec.mac.as_str()),
            ("iface-status", "active"),
            ("vm-uuid", spec.domain_uuid.as_str()),
            (KEY_DOMAIN, spec.domain_uuid.as_str()),
            (KEY_NODE, self.s.node.as_str()),
            (KEY_HANDLE, spec.handle.as_str()),
        ]);
        let owner = ovs_map([
            (KEY_DOMAIN, spec.domain_uuid.as_str()),
            (KEY_NODE, self.s.node.as_str()),
            (KEY_HANDLE, spec.handle.as_str()),
        ]);
        let rep = &f.representor;
        vec![
            // The bridge must exist, and the representor must not be in OVS already: either
            // failing aborts the whole transaction, so nothing is half-created.
            json!({"op": "wait", "table": "Bridge", "timeout": 0, "where": [["name", "==", bridge]],
                   "columns": ["name"], "until": "==", "rows": [{"name": bridge}]}),
            json!({"op": "wait", "table": "Interface", "timeout": 0, "where": [["name", "==", rep]],
                   "columns": ["name"], "until": "==", "rows": []}),
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": rep, "type": self.s.interface_type, "external_ids": ids}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": rep, "interfaces": ["named-uuid", "iface"], "external_ids": owner}}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                   "mutations": [["next_cfg", "+=", 1]]}),
            json!({"op": "comment", "comment": format!("metalvirt: plug {} on {}", spec.handle, self.s.node)}),
        ]
    }

    /// Waits until the plugged interface is usable as configured.
    async fn settle(&self, handle: &str, rep: &str) -> BResult<()> {
        let deadline = Instant::now() + self.s.plug_timeout;
        let node = self.s.node.as_str();
        if self.s.wait == WaitFor::Commit {
            // Until the replica holds it, so the next plug does not see the function free.
            let seen = self
                .session
                .wait_until(deadline, |st| st.replica.by_handle(node, handle).map(drop))
                .await;
            return seen.ok_or_else(|| {
                self.fail(format_args!("port {rep} vanished right after it was added"))
            });
        }
        let want_ovn = self.s.wait == WaitFor::OvnInstalled;
        let r = self
            .session
            .wait_until(deadline, |st| {
                let (_, i) = st.replica.by_handle(node, handle)?;
                match i.ofport {
                    Some(-1) => Some(Err(i.error.clone().unwrap_or_else(|| "ofport -1".into()))),
                    Some(p) if p > 0 => {
                        let ovn = i.external_ids.get("ovn-installed").map(String::as_str);
                        (!want_ovn || ovn == Some("true")).then_some(Ok(()))
                    }
                    _ => None,
                }
            })
            .await;
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.fail(format_args!(
                "Open vSwitch cannot use representor {rep}: {e}"
            ))),
            None => {
                let what = if want_ovn {
                    "ovn-installed (is ovn-controller running and the port known to OVN?)"
                } else {
                    "an OpenFlow port (is ovs-vswitchd running?)"
                };
                Err(BackendError::with_kind(
                    ErrorKind::Timeout,
                    format!(
                        "representor {rep} got no {what} within {:?} on node {node}",
                        self.s.plug_timeout
                    ),
                ))
            }
        }
    }

    async fn plug_inner(&self, spec: &NicSpec) -> BResult<String> {
        self.session.conn().await?;
        let existing = self.session.view(|r| {
            r.by_handle(&self.s.node, &spec.handle)
                .map(|(_, i)| i.name.clone())
        });
        if let Some(rep) = existing {
            self.settle(&spec.handle, &rep).await?;
            return Ok(rep);
        }
        let bridge = spec.bridge.as_deref().unwrap_or(&self.s.bridge);
        let mut skip = Vec::new();
        let mut present = None;
        loop {
            let prefer = spec.representor.as_deref();
            let f = match self.take(&spec.handle, prefer, &skip, present.as_ref()) {
                Ok(f) => f,
                // The replica trails the server by one notification: before calling the
                // pool exhausted, ask the server which representors it really holds.
                Err(_) if present.is_none() => {
                    present = Some(self.present_names().await?);
                    skip.clear();
                    self.take(&spec.handle, prefer, &skip, present.as_ref())?
                }
                Err(e) => return Err(e),
            };
            self.program_mac(spec, &f).await?;
            match self
                .session
                .transact_raw(self.add_ops(spec, &f, bridge))
                .await?
            {
                Ok(_) => {
                    self.settle(&spec.handle, &f.representor).await?;
                    return Ok(f.representor);
                }
                Err(OvsdbError::Operation { index: 0, .. }) => {
                    let mut known: Vec<String> = self
                        .session
                        .view(|r| r.bridges.values().map(|b| b.name.clone()).collect());
                    known.sort();
                    return Err(self.fail(format_args!(
                        "bridge '{bridge}' does not exist in Open vSwitch (bridges: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                Err(OvsdbError::Operation { index: 1, .. }) => {
                    // Someone else added this representor meanwhile: take another.
                    tracing::warn!(node = %self.s.node, representor = %f.representor, "representor already in Open vSwitch; taking another function");
                    self.taken().remove(&spec.handle);
                    skip.push(f.representor);
                }
                Err(e) => {
                    return Err(BackendError::with_kind(
                        classify(&e),
                        format!("cannot add port {}: {e}", f.representor),
                    ))
                }
            }
        }
    }

    async fn unplug_inner(&self, handle: &str) -> BResult<()> {
        self.session.conn().await?;
        let found = self.session.view(|r| {
            let (uuid, _) = r.by_handle(&self.s.node, handle)?;
            Some((uuid.clone(), r.port_of(uuid)))
        });
        let Some((iface, holder)) = found else {
            self.taken().remove(handle);
            return Ok(());
        };
        let mut ops = Vec::new();
        match holder {
            Some((port, Some(bridge))) => ops.push(
                json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", bridge]]],
                       "mutations": [["ports", "delete", ["set", [["uuid", port]]]]]}),
            ),
            // Rows not (yet) seen in a bridge: delete them directly.
            Some((port, None)) => {
                ops.push(json!({"op": "delete", "table": "Port", "where": [["_uuid", "==", ["uuid", port]]]}))
            }
            None => ops.push(
                json!({"op": "delete", "table": "Interface", "where": [["_uuid", "==", ["uuid", iface.clone()]]]}),
            ),
        }
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["next_cfg", "+=", 1]]}));
        ops.push(
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
        );
        ops.push(json!({"op": "comment", "comment": format!("metalvirt: unplug {handle} on {}", self.s.node)}));
        let res = self
            .session
            .transact(ops)
            .await
            .map_err(|e| BackendError::with_kind(e.kind, format!("cannot remove port: {e}")))?;
        let next_cfg = res[2]["rows"][0]["next_cfg"].as_i64().unwrap_or(0);
        // The row is gone once the replica says so; with ovs-vswitchd, once it applied it.
        let deadline = Instant::now() + self.s.plug_timeout;
        let vswitchd = self.s.wait != WaitFor::Commit;
        let done = self
            .session
            .wait_until(deadline, |st| {
                let gone = !st.replica.ifaces.contains_key(&iface);
                (gone && (!vswitchd || st.replica.cur_cfg >= next_cfg)).then_some(())
            })
            .await;
        if done.is_none() {
            tracing::warn!(node = %self.s.node, handle, "port removed from OVSDB, but ovs-vswitchd has not applied it yet");
        }
        self.taken().remove(handle);
        Ok(())
    }
}

/// Runs `f` again once if the connection dropped under it: each attempt starts from the
/// replica of the (re)connected server, so one that committed before the drop is found.
async fn once_more<T, F: std::future::Future<Output = BResult<T>>>(
    mut f: impl FnMut() -> F,
) -> BResult<T> {
    match f().await {
        Err(e) if e.kind == ErrorKind::Unreachable => {
            tracing::debug!("OVSDB connection dropped during a call; retrying once: {e}");
            f().await
        }
        r => r,
    }
}

#[async_trait]
impl Nics for OvsNics {
    async fn plug(&self, spec: &NicSpec) -> BResult<String> {
        let r = once_more(|| self.plug_inner(spec)).await;
        // Done: the replica holds the port (or there is none).
        self.taken().remove(&spec.handle);
        // (Unreachable: the caller's rollback retries once the server is back.)
        if r.as_ref().is_err_and(|e| e.kind != ErrorKind::Unreachable) {
            // Leave nothing behind: the port if the transaction committed, the function.
            if let Err(e) = self.unplug(&spec.handle).await {
                tracing::warn!(node = %self.s.node, handle = %spec.handle, "cleanup after a failed plug failed: {e}");
            }
        }
        r
    }

    async fn unplug(&self, handle: &str) -> BResult<()> {
        once_more(|| self.unplug_inner(handle)).await
    }

    async fn list(&self) -> BResult<Vec<String>> {
        self.session.conn().await?;
        Ok(self.session.view(|r| {
            let mut v: Vec<String> = r
                .ifaces
                .values()
                .filter(|i| i.external_ids.get(KEY_NODE) == Some(&self.s.node))
                .filter_map(|i| i.external_ids.get(KEY_HANDLE).cloned())
                .collect();
            v.sort();
            v
        }))
    }

    async fn stats(&self, handle: &str) -> BResult<IfStats> {
        self.session.conn().await?;
        let uuid = self
            .session
            .view(|r| r.by_handle(&self.s.node, handle).map(|(u, _)| u.clone()))
            .ok_or_else(|| BackendError::new(format!("NIC {handle} is not plugged")))?;
        let res = self
            .session
            .transact(vec![json!({"op": "select", "table": "Interface",
                                  "where": [["_uuid", "==", ["uuid", uuid]]], "columns": ["statistics"]})])
            .await?;
        let st = &res[0]["rows"][0]["statistics"];
        let mut m = BTreeMap::new();
        if let Some([_, Value::Array(pairs)]) = st.as_array().map(Vec::as_slice) {
            for p in pairs {
                if let Some([Value::String(k), v]) = p.as_array().map(Vec::as_slice) {
                    m.insert(k.as_str(), v.as_i64().unwrap_or(0));
                }
            }
        }
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        // A representor's receive side is the server's transmit side.
        Ok(IfStats {
            rx_bytes: g("tx_bytes"),
            rx_packets: g("tx_packets"),
            rx_errs: g("tx_errors"),
            rx_drop: g("tx_dropped"),
            tx_bytes: g("rx_bytes"),
            tx_packets: g("rx_packets"),
            tx_errs: g("rx_errors"),
            tx_drop: g("rx_dropped"),
        })
    }
}

/// Fuzz target: the OVSDB client and the replica NIC plumbing reads from, against a server
/// whose every reply and notification is taken from `data` (see [`crate::fuzz`]): monitor
/// contents and updates, transact and list_dbs results, echo.
#[doc(hidden)]
pub fn fuzz_replies(data: &[u8]) {
    let script = crate::backend::scripted::script(data, 64);
    crate::backend::scripted::runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(crate::backend::scripted::scripted_peer(server, script, |id| {
            json!({"id": id, "result": null, "error": "fuzz", "details": "no more replies"})
        }));
        let (r, w) = tokio::io::split(client);
        let replica = Arc::new(Mutex::new(Replica::default()));
        let rep = replica.clone();
        let on_update: UpdateFn = Arc::new(move |_mon, updates| {
            rep.lock().unwrap_or_else(|e| e.into_inner()).apply(updates)
        });
        let db = Ovsdb::start(r, w, Duration::from_secs(2), Some(on_update));
        let run = async {
            let _ = db
                .monitor("Open_vSwitch", json!("fuzz"), monitor_requests())
                .await;
            let _ = db.list_dbs().await;
            let ops = vec![
                json!({"op": "wait", "table": "Bridge", "where": [["name", "==", "br-int"]],
                       "columns": ["name"], "until": "==", "rows": [{"name": "br-int"}], "timeout": 0}),
                json!({"op": "select", "table": "Interface", "where": [], "columns": ["name"]}),
            ];
            let _ = db.transact("Open_vSwitch", ops).await;
            let _ = db.call("echo", json!(["fuzz"])).await;
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the OVSDB client hung on a reply");
        let r = replica.lock().unwrap_or_else(|e| e.into_inner());
        let _ = r.by_handle("fuzz", "mv-h");
        let _ = r.has_iface_named("pf0vf0");
        for name in r.ifaces.keys() {
            let _ = r.port_of(name);
        }
    });
}

#[cfg(test)]
mod tests {
    //! Against a real ovsdb-server (no ovs-vswitchd: plugs wait for the commit only, except
    //! where the test is about waiting). The OVS/OVN end-to-end tests with ovs-vswitchd and
    //! ovn-controller are in tests/python/test_ovs_peers.py.

    use super::testing::Server;
    use super::*;

    fn settings(node: &str, reps: &[&str]) -> OvsSettings {
        OvsSettings {
            node: node.into(),
            bridge: "br-int".into(),
            functions: reps
                .iter()
                .map(|r| Function {
                    function: format!("fn-{r}"),
                    representor: r.to_string(),
                })
                .collect(),
            interface_type: "internal".into(),
            wait: WaitFor::Commit,
            plug_timeout: Duration::from_secs(5),
            mac_command: None,
            mac_sysfs: None,
            step_timeout: Duration::from_secs(5),
        }
    }

    fn spec(n: u8) -> NicSpec {
        NicSpec {
            handle: format!("mv-0123456789abcdef0123456789abcdef-5254000000{n:02x}"),
            mac: format!("52:54:00:00:00:{n:02x}"),
            bridge: None,
            interface_id: Some(format!("port-{n}")),
            domain_uuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
            representor: None,
        }
    }

    fn nics(srv: &Server, node: &str, reps: &[&str]) -> OvsNics {
        OvsNics::new(
            settings(node, reps),
            Session::start(&srv.addr(), Duration::from_secs(2), None),
        )
    }

    /// `external_ids` of an interface as ovs-vsctl shows them (an independent reader).
    fn ids(srv: &Server, name: &str) -> String {
        srv.vsctl(&["get", "Interface", name, "external_ids"])
    }

    #[tokio::test]
    async fn plug_unplug_pool_and_idempotence() {
        let srv = Server::start().with_bridge("br-int");
        let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
        let rep = n.plug(&spec(1)).await.unwrap();
        assert_eq!(rep, "pf0vf0");
        let got = ids(&srv, "pf0vf0");
        for want in [
            "iface-id=port-1",
            "attached-mac=\"52:54:00:00:00:01\"",
            "iface-status=active",
            "vm-uuid=\"01234567-89ab-cdef-0123-456789abcdef\"",
            "metalvirt-node=bm-1",
            "metalvirt-domain=\"01234567-89ab-cdef-0123-456789abcdef\"",
        ] {
            assert!(got.contains(want), "{want} in {got}");
        }
        assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "pf0vf0");
        // The same handle again is the same port.
        assert_eq!(n.plug(&spec(1)).await.unwrap(), "pf0vf0");
        assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf1");
        let e = n.plug(&spec(3)).await.unwrap_err();
        assert_eq!(e.msg, "no free NIC function on node bm-1 (all 2 in use)");
        assert_eq!(n.list().await.unwrap(), [spec(1).handle, spec(2).handle]);
        n.unplug(&spec(1).handle).await.unwrap();
        n.unplug(&spec(1).handle).await.unwrap();
        assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "pf0vf1");
        // Port and Interface rows are gone, not only the bridge's reference.
        assert!(!srv
            .vsctl(&["--columns=name", "list", "Interface"])
            .contains("pf0vf0"));
        // The freed function is handed out again.
        assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
        // Statistics: the representor's counters, seen from the server's side.
        srv.vsctl(&[
            "set",
            "Interface",
            "pf0vf0",
            "statistics:rx_bytes=100",
            "statistics:tx_bytes=7",
        ]);
        let st = n.stats(&spec(3).handle).await.unwrap();
        assert_eq!((st.rx_bytes, st.tx_bytes), (7, 100));
    }

    #[tokio::test]
    async fn a_taken_representor_is_skipped_and_a_preferred_one_kept() {
        let srv = Server::start().with_bridge("br-int");
        srv.vsctl(&["add-port", "br-int", "pf0vf0"]);
        let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1", "pf0vf2"]);
        let mut s = spec(1);
        s.representor = Some("pf0vf2".into());
        assert_eq!(n.plug(&s).await.unwrap(), "pf0vf2");
        assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf1");
        // Someone else's port is never ours to list or remove.
        assert_eq!(n.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_function_freed_by_someone_else_is_usable_at_once() {
        let srv = Server::start().with_bridge("br-int");
        let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
        n.plug(&spec(1)).await.unwrap();
        n.plug(&spec(2)).await.unwrap();
        // Another client deletes pf0vf0; our replica hears of it a moment later, but the
        // next plug must not call the pool exhausted meanwhile.
        let other = ovsdb::Ovsdb::connect(&srv.addr(), Duration::from_secs(2))
            .await
            .unwrap();
        let port = srv.vsctl(&["get", "Port", "pf0vf0", "_uuid"]);
        other
            .transact(
                "Open_vSwitch",
                vec![
                    json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
                            "mutations": [["ports", "delete", ["set", [["uuid", port]]]]]}),
                ],
            )
            .await
            .unwrap();
        assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
    }

    #[tokio::test]
    async fn a_missing_bridge_fails_cleanly() {
        let srv = Server::start().with_bridge("br-int");
        let n = nics(&srv, "bm-1", &["pf0vf0"]);
        let mut s = spec(1);
        s.bridge = Some("br-nope".into());
        let e = n.plug(&s).await.unwrap_err();
        assert!(
            e.msg
                .contains("bridge 'br-nope' does not exist in Open vSwitch (bridges: br-int)"),
            "{e}"
        );
        assert_eq!(
            srv.vsctl(&["--columns=name", "list", "Interface"]),
            "name                : br-int"
        );
        // And the function is free again.
        assert_eq!(n.plug(&spec(2)).await.unwrap(), "pf0vf0");
    }

    #[tokio::test]
    async fn waiting_for_an_ofport_times_out_without_vswitchd_and_rolls_back() {
        let srv = Server::start().with_bridge("br-int");
        let mut s = settings("bm-1", &["pf0vf0"]);
        s.wait = WaitFor::Ofport;
        s.plug_timeout = Duration::from_millis(300);
        let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
        let e = n.plug(&spec(1)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(e.msg.contains("is ovs-vswitchd running?"), "{e}");
        assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
        // ovs-vswitchd's verdict on a representor it cannot open fails the plug at once.
        let mut s = settings("bm-1", &["pf0vf0"]);
        s.wait = WaitFor::Ofport;
        let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
        let plug = tokio::spawn(async move { n.plug(&spec(2)).await });
        for _ in 0..200 {
            if srv.vsctl(&["list-ports", "br-int"]) == "pf0vf0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        srv.vsctl(&[
            "set",
            "Interface",
            "pf0vf0",
            "ofport=-1",
            "error=\"could not open network device pf0vf0 (No such device)\"",
        ]);
        let e = plug.await.unwrap().unwrap_err();
        assert!(e.msg.contains("No such device"), "{e}");
        assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
    }

    #[tokio::test]
    async fn mac_programming_runs_before_the_port_and_its_failure_adds_nothing() {
        let srv = Server::start().with_bridge("br-int");
        let log = srv.dir.path().join("mac.log");
        let script = srv.dir.path().join("setmac");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n[ \"$2\" != 52:54:00:00:00:09 ] || {{ echo 'device busy' >&2; exit 3; }}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = settings("bm-1", &["pf0vf0"]);
        s.mac_command = Some(vec![
            script.display().to_string(),
            "{function}".into(),
            "{mac}".into(),
            "{representor}@{node}".into(),
        ]);
        s.mac_sysfs = Some(
            srv.dir
                .path()
                .join("sysfs-{function}")
                .display()
                .to_string(),
        );
        let n = OvsNics::new(s, Session::start(&srv.addr(), Duration::from_secs(2), None));
        n.plug(&spec(1)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "fn-pf0vf0 52:54:00:00:00:01 pf0vf0@bm-1\n"
        );
        assert_eq!(
            std::fs::read_to_string(srv.dir.path().join("sysfs-fn-pf0vf0")).unwrap(),
            "52:54:00:00:00:01\n"
        );
        n.unplug(&spec(1).handle).await.unwrap();
        let e = n.plug(&spec(9)).await.unwrap_err();
        assert!(e.msg.contains("MAC programming of fn-pf0vf0 failed"), "{e}");
        assert!(e.msg.contains("device busy"), "{e}");
        assert_eq!(srv.vsctl(&["list-ports", "br-int"]), "");
    }

    #[tokio::test]
    async fn the_session_reconnects_after_the_server_restarts() {
        let mut srv = Server::start().with_bridge("br-int");
        let n = nics(&srv, "bm-1", &["pf0vf0", "pf0vf1"]);
        n.plug(&spec(1)).await.unwrap();
        srv.stop();
        // Meanwhile, someone removes our port and adds one of theirs.
        let e = n.plug(&spec(2)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        assert!(e.msg.contains("unreachable"), "{e}");
        srv.serve();
        srv.vsctl(&["del-port", "br-int", "pf0vf0"]);
        srv.vsctl(&["add-port", "br-int", "pf0vf1"]);
        // The replica follows the restarted server: pf0vf0 is free, pf0vf1 taken.
        assert_eq!(n.plug(&spec(3)).await.unwrap(), "pf0vf0");
        assert_eq!(n.list().await.unwrap(), [spec(3).handle]);
    }
}
