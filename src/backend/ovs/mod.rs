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

mod replica;
mod session;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

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

use replica::*;
pub use session::Session;
use session::*;

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
mod tests;
