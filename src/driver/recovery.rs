//! Start-up and recovery: loading definitions and live state, finishing or undoing what a
//! crash interrupted, quarantining what cannot be read, and the background work that
//! keeps the backends in step with the live domains (NIC and disk reconciliation,
//! disk healing, autostart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::plan::{disk_spec, nic_spec, owned_handles};
use super::state::{st, DomainState, Paused, Running, Shutoff, Transition};
use super::steps::set_device;
use super::store::{Found, Phase, Status, Step};
use super::stored::StoredDef;
use super::{DomState, DomainObj, Driver};
use crate::backend::Node;
use crate::domain::def::LiveInfo;

impl Driver {
    /// Starts the power watcher, NIC and disk reconciliation, disk healing and autostart.
    pub fn start_background(self: &Arc<Self>) {
        // The domains found on each node, grouped once: reconciling a node looks at its own
        // domains only (each node looking through every domain cost O(nodes × domains)
        // job locks: 2.5 s of CPU for 1,000 running on 10,000 nodes).
        let mut on: std::collections::HashMap<String, Vec<Arc<DomainObj>>> = Default::default();
        for obj in self.all() {
            if let Some(n) = obj.with(|s| s.node.clone()) {
                on.entry(n).or_default().push(obj);
            }
        }
        for node in self.nodes.iter().cloned() {
            let doms: Arc<[Arc<DomainObj>]> = on.remove(&node.spec.name).unwrap_or_default().into();
            let (d, n, nic_doms) = (self.clone(), node.clone(), doms.clone());
            tokio::spawn(async move {
                let r = until_ok("NIC ports", &n.spec.name, || {
                    d.reconcile_nics(&n, &nic_doms)
                })
                .await;
                if r.0 + r.1 > 0 {
                    tracing::warn!(node = %n.spec.name, removed = r.0, replugged = r.1, "reconciled NIC ports");
                }
            });
            let d = self.clone();
            tokio::spawn(async move {
                let r =
                    until_ok("disks", &node.spec.name, || d.reconcile_disks(&node, &doms)).await;
                if r.0 + r.1 > 0 {
                    tracing::warn!(node = %node.spec.name, removed = r.0, remapped = r.1, "reconciled disks");
                }
                // Then keep presenting what the disk backend drops on its own.
                let Some(every) = node.disks.heal_interval() else {
                    return;
                };
                let mut failing = false;
                loop {
                    tokio::time::sleep(every).await;
                    match node.disks.heal().await {
                        Ok(done) => {
                            failing = false;
                            for h in done {
                                tracing::warn!(node = %node.spec.name, "disk backend healed: {h}");
                            }
                        }
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(node = %node.spec.name, "cannot check the disk backend: {e}");
                        }
                        Err(_) => {}
                    }
                }
            });
        }
        for node in self.nodes.iter() {
            self.reconcile_on_reconnect(node);
        }
        let d = self.clone();
        tokio::spawn(async move {
            for obj in d.all() {
                if !obj.with(|s| s.autostart && !s.active() && s.quarantine.is_none()) {
                    continue;
                }
                let _job = obj.begin_internal_job(super::START_JOB).await;
                let name = obj.with(|s| s.def.name().to_string());
                match d.start_locked(&obj, false).await {
                    Ok(_) => tracing::info!(domain = %name, "autostarted"),
                    Err(e) => tracing::error!(domain = %name, "autostart failed: {e}"),
                }
            }
        });
        self.start_watcher();
    }

    /// Reconciles a node's NICs (disks) again each time their backend's peer comes back
    /// after a loss (a DPU agent restarted or was out of reach): a start it was in the
    /// middle of is undone there, and what it lost is plugged (mapped) again.
    fn reconcile_on_reconnect(self: &Arc<Self>, node: &Node) {
        if let Some(mut rx) = node.nics.reconnects() {
            let (d, n) = (self.clone(), node.clone());
            tokio::spawn(async move {
                rx.borrow_and_update();
                while rx.changed().await.is_ok() {
                    let doms = d.domains_on(&n.spec.name);
                    let r =
                        until_ok("NIC ports", &n.spec.name, || d.reconcile_nics(&n, &doms)).await;
                    tracing::warn!(node = %n.spec.name, removed = r.0, replugged = r.1, "reconciled NIC ports after the backend came back");
                }
            });
        }
        if let Some(mut rx) = node.disks.reconnects() {
            let (d, n) = (self.clone(), node.clone());
            tokio::spawn(async move {
                rx.borrow_and_update();
                while rx.changed().await.is_ok() {
                    let doms = d.domains_on(&n.spec.name);
                    let r = until_ok("disks", &n.spec.name, || d.reconcile_disks(&n, &doms)).await;
                    tracing::warn!(node = %n.spec.name, removed = r.0, remapped = r.1, "reconciled disks after the backend came back");
                }
            });
        }
    }

    /// The domains whose live run is on `node`.
    fn domains_on(&self, node: &str) -> Vec<Arc<DomainObj>> {
        self.all()
            .into_iter()
            .filter(|o| o.with(|s| s.node.as_deref() == Some(node)))
            .collect()
    }

    // ------------------------------------------------------------------ recovery

    /// Loads definitions and live state and recovers interrupted operations.
    pub(super) async fn load(&self) -> Result<(), String> {
        let configs = self
            .store
            .load_configs()
            .map_err(|e| format!("cannot read definitions: {e}"))?;
        for (stem, xml, auto) in configs {
            match StoredDef::parse_xml(&xml) {
                Ok(def) => {
                    if def.name() != stem {
                        tracing::warn!(file = %stem, name = %def.name(), "definition file name differs from domain name");
                    }
                    let mut s = DomState::new(def.clone(), true);
                    s.autostart = auto;
                    if self.check_unique(&def, false).ok().flatten().is_some() {
                        tracing::error!(name = %def.name(), "duplicate definition skipped");
                        continue;
                    }
                    self.insert(DomainObj::new(def.uuid(), s), def.name());
                }
                Err(e) => tracing::error!(file = %stem, "unreadable definition skipped: {e}"),
            }
        }
        let statuses = self
            .store
            .load_statuses()
            .map_err(|e| format!("cannot read live state: {e}"))?;
        let mut max_id = 0;
        for found in statuses {
            match found {
                Found::Status(st) => {
                    max_id = max_id.max(st.id);
                    self.recover(st).await;
                }
                Found::Unreadable { uuid, why } => self.quarantine_unreadable(uuid, &why),
                Found::Released { uuid, read, path } => {
                    match read {
                        Ok(mut st) => {
                            tracing::warn!(domain = %st.name, node = %st.node, "live state released by the operator: undoing its run (power off, unmap)");
                            st.phase = Phase::Stopping;
                            st.stop_reason = Some(Shutoff::Destroyed as i32);
                            self.recover(st).await;
                        }
                        Err(why) => {
                            tracing::warn!(
                                uuid = ?uuid,
                                "released live state cannot be read ({why}): forgotten; its disks and NICs are reclaimed as orphans, its server's power is left as it is"
                            );
                            // A change of it the status log still held must not bring it back.
                            if let Some(u) = uuid {
                                if let Err(e) = self.store.delete_status(&u).await {
                                    tracing::error!("cannot forget the status of {u}: {e}");
                                }
                            }
                        }
                    }
                    if let Err(e) = self.store.remove_file(&path) {
                        tracing::error!("cannot remove {}: {e}", path.display());
                    }
                }
            }
        }
        self.next_id
            .store(max_id + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn recover(&self, status: Status) {
        let Some(node) = self.node(&status.node).cloned() else {
            let why = format!("its node '{}' is no longer configured", status.node);
            self.quarantine_known(status, &why);
            return;
        };
        match status.phase {
            Phase::Active => {
                let live = LiveInfo {
                    id: status.id,
                    node: status.node.clone(),
                };
                let parsed = StoredDef::parse_live_xml(&status.xml).and_then(|d| {
                    let x = d.live_xml(&live)?;
                    Ok((d, Arc::new(x)))
                });
                // A running server whose definition this version cannot read is left alone:
                // undoing it would power it off under its workload.
                let (live_def, live_xml) = match parsed {
                    Ok(d) => d,
                    Err(e) => {
                        let why = format!("its live definition cannot be read: {e}");
                        self.quarantine_known(status, &why);
                        return;
                    }
                };
                let obj = match self.lookup_uuid(&status.uuid) {
                    Ok(o) => o,
                    Err(_) => {
                        let o = DomainObj::new(status.uuid, DomState::new(live_def.clone(), false));
                        self.insert(o.clone(), live_def.name());
                        o
                    }
                };
                // A hot-plug or hot-unplug interrupted by the stop left a journal step that
                // the live definition does not own: finish undoing it.
                let owned = live_def
                    .tree()
                    .map(|t| owned_handles(&status.uuid, &t))
                    .unwrap_or_default();
                let (kept, stale): (Vec<Step>, Vec<Step>) = status
                    .journal
                    .iter()
                    .cloned()
                    .partition(|st| st.handle().is_none_or(|h| owned.iter().any(|o| o == h)));
                if !stale.is_empty() {
                    let errors = self.undo(&node, &stale, &status.name).await;
                    tracing::warn!(domain = %status.name, steps = stale.len(), failures = errors.len(), "undid device changes interrupted by a daemon stop");
                }
                obj.with(|s| {
                    if s.persistent && s.new_def.is_none() {
                        s.new_def = Some(s.def.clone());
                    }
                    s.def = live_def.clone();
                    s.live_xml = Some(live_xml.clone());
                    s.persistent = s.persistent && status.persistent;
                    s.apply(Transition::Recovered(recorded_state(&status)));
                    s.id = status.id;
                    s.node = Some(status.node.clone());
                    s.journal = kept.clone();
                    s.started = Some(Instant::now());
                });
                self.set_id(&obj, -1, status.id);
                if !stale.is_empty() {
                    let _ = self.persist_active(&obj).await;
                }
                self.mark_busy(&status.node, status.uuid);
                tracing::info!(domain = %status.name, id = status.id, node = %status.node, "reattached to live domain");
                if let Ok(t) = live_def.tree() {
                    self.serve_serial_ports(&obj, &t);
                }
            }
            Phase::Starting | Phase::Stopping => {
                let errors = self.undo(&node, &status.journal, &status.name).await;
                let _ = self.store.delete_status(&status.uuid).await;
                let why = match status.phase {
                    Phase::Starting => Shutoff::Failed,
                    _ => status
                        .stop_reason
                        .map_or(Shutoff::Daemon, Shutoff::from_code),
                };
                if let Ok(obj) = self.lookup_uuid(&status.uuid) {
                    obj.with(|s| {
                        s.apply(Transition::InterruptedFinished(why));
                        if !errors.is_empty() {
                            s.messages
                                .push(format!("recovery cleanup left: {}", errors.join("; ")));
                        }
                    });
                }
                tracing::warn!(domain = %status.name, phase = ?status.phase, "finished an operation interrupted by a daemon stop");
            }
        }
    }
}

/// What a quarantined domain tells virsh dominfo, GET_MESSAGES and the log.
fn quarantine_note(why: &str) -> String {
    format!(
        "quarantined: {why}. metalvirt left the server as it was (power, disks, NICs) and \
         refuses to start, stop or change it until an operator clears this \
         (docs/RELIABILITY.md, \"Quarantine\")"
    )
}

impl Driver {
    /// The domain object of a quarantined run: the defined domain, or a transient stand-in
    /// under `name` (its definition is what could not be read).
    fn quarantine_obj(&self, uuid: Uuid, name: &str) -> Option<Arc<DomainObj>> {
        if let Ok(o) = self.lookup_uuid(&uuid) {
            return Some(o);
        }
        let mut name = name.to_string();
        if self.lookup_name(&name).is_ok() || name.is_empty() {
            name = format!("quarantined-{uuid}");
        }
        let esc = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let xml = format!(
            "<domain type='kvm'><name>{esc}</name><uuid>{uuid}</uuid>\
             <memory unit='KiB'>1024</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        );
        let def = match StoredDef::parse_xml(&xml) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(%uuid, "cannot stand in for a quarantined domain: {e}");
                return None;
            }
        };
        let o = DomainObj::new(uuid, DomState::new(def.clone(), false));
        self.insert(o.clone(), def.name());
        Some(o)
    }

    /// Quarantines a run whose status was read but cannot be acted on: its node stays
    /// reserved and every disk and NIC it holds stays owned.
    fn quarantine_known(&self, status: Status, why: &str) {
        let Some(obj) = self.quarantine_obj(status.uuid, &status.name) else {
            return;
        };
        let note = quarantine_note(why);
        tracing::error!(domain = %status.name, node = %status.node, "{note}");
        obj.with(|s| {
            s.quarantine = Some(why.to_string());
            s.apply(Transition::Recovered(recorded_state(&status)));
            s.id = status.id;
            s.node = Some(status.node.clone());
            s.journal = status.journal.clone();
            s.note(note);
        });
        self.set_id(&obj, -1, status.id);
        self.mark_busy(&status.node, status.uuid);
    }

    /// Quarantines a run whose status cannot be read at all: its state is unknown
    /// (NOSTATE), the node it was last placed on stays reserved, and every disk and NIC
    /// named after it stays owned.
    fn quarantine_unreadable(&self, uuid: Option<Uuid>, why: &str) {
        let Some(uuid) = uuid else {
            tracing::error!("a live status file that names no domain cannot be read: {why}");
            return;
        };
        let Some(obj) = self.quarantine_obj(uuid, "") else {
            return;
        };
        let why = format!("its live status cannot be read ({why})");
        let note = quarantine_note(&why);
        let name = obj.with(|s| s.def.name().to_string());
        tracing::error!(domain = %name, "{note}");
        obj.with(|s| {
            s.quarantine = Some(why.clone());
            s.apply(Transition::Unknown);
            s.note(note);
        });
        let last = self
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .history_of(uuid);
        for n in last {
            self.mark_busy(&n, uuid);
        }
    }
}

/// Runs `f` until it succeeds (a backend may not answer yet at start-up), with backoff from
/// 0.5 s to 30 s; the first failure is logged.
async fn until_ok<T, F, Fut>(what: &str, node: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut pause = Duration::from_millis(500);
    let mut tries = 0u32;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tries += 1;
                if tries == 1 {
                    tracing::warn!(node, "cannot reconcile {what} yet: {e}; retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The state a status file recorded for an active run; a pair no run can be in (written by
/// another version) reads as running or paused with the reason unknown.
fn recorded_state(status: &Status) -> DomainState {
    DomainState::from_codes(status.state, status.reason)
        .filter(|s| s.is_active())
        .unwrap_or(if status.state == st::PAUSED {
            DomainState::Paused(Paused::Unknown)
        } else {
            DomainState::Running(Running::Unknown)
        })
}

impl Driver {
    // ------------------------------------------------------------------ reconcile

    /// Makes a node's plugged NICs match its live domain (start-up, after recovery): ports
    /// the backend holds for this node that no live domain owns are removed, and NICs a live
    /// domain owns that the backend lacks (lost while the daemon was down) are plugged again,
    /// on the same function when it is free. Each domain is examined under its job, so
    /// operations running meanwhile are never undone. Returns (removed, re-plugged).
    pub(super) async fn reconcile_nics(
        &self,
        node: &Node,
        doms: &[Arc<DomainObj>],
    ) -> Result<(usize, usize), String> {
        let n = node.spec.name.as_str();
        let listed = node.nics.list().await.map_err(|e| e.to_string())?;
        let removed = self.remove_orphans(node, &listed, Orphan::Nic).await;
        let mut replugged = 0;
        for obj in doms {
            let _job = obj.begin_internal_job("reconcile").await;
            if !obj.with(|s| s.active() && s.node.as_deref() == Some(n) && s.quarantine.is_none()) {
                continue;
            }
            let listed = node.nics.list().await.map_err(|e| e.to_string())?;
            let steps: Vec<(String, String, Option<String>)> = obj.with(|s| {
                s.journal
                    .iter()
                    .filter_map(|st| match st {
                        Step::Nic {
                            handle,
                            mac,
                            representor,
                        } if !listed.contains(handle) => {
                            Some((handle.clone(), mac.clone(), representor.clone()))
                        }
                        _ => None,
                    })
                    .collect()
            });
            if steps.is_empty() {
                continue;
            }
            let Ok(mut tree) = Self::live_tree(obj) else {
                continue;
            };
            let name = obj.with(|s| s.def.name().to_string());
            let mut changed = false;
            for (handle, mac, old) in steps {
                let Some(view) = tree
                    .interfaces()
                    .into_iter()
                    .find(|i| i.mac.as_deref() == Some(mac.as_str()))
                else {
                    continue;
                };
                let Some(mut spec) = nic_spec(&obj.uuid, &view) else {
                    continue;
                };
                spec.representor = old.clone();
                match node.nics.plug(&spec).await {
                    Ok(rep) => {
                        replugged += 1;
                        tracing::warn!(domain = %name, node = n, mac = %mac, representor = %rep, "reconcile: re-plugged a NIC missing from the backend");
                        if old.as_deref() != Some(rep.as_str()) {
                            obj.with(|s| set_device(&mut s.journal, &handle, rep.clone()));
                            if view.target_dev.is_none() || view.target_dev == old {
                                tree.set_interface_target(view.index, &rep);
                            }
                            changed = true;
                        }
                    }
                    Err(e) => {
                        tracing::error!(domain = %name, node = n, mac = %mac, "reconcile: cannot re-plug a missing NIC: {e}");
                        obj.with(|s| {
                            s.note(format!("NIC {mac} was lost while the daemon was down and could not be plugged again: {e}"))
                        });
                    }
                }
            }
            if changed {
                let _ = self.commit_live(obj, &tree).await;
            }
        }
        Ok((removed, replugged))
    }
}

impl Driver {
    /// Compares the disks running domains on `node` should have with what its disk backend
    /// holds: mappings no running domain's journal owns are removed; every journaled disk is
    /// attached again, which adopts what is there (the backend learns what to keep presenting)
    /// and maps what was lost while the daemon was down (at the same position on the host's
    /// controller); then the backend tidies what no disk uses. Returns (removed, remapped).
    pub(super) async fn reconcile_disks(
        &self,
        node: &Node,
        doms: &[Arc<DomainObj>],
    ) -> Result<(usize, usize), String> {
        let n = node.spec.name.as_str();
        let listed = node.disks.list().await.map_err(|e| e.to_string())?;
        let removed = self.remove_orphans(node, &listed, Orphan::Disk).await;
        let mut remapped = 0;
        for obj in doms {
            let _job = obj.begin_internal_job("reconcile").await;
            if !obj.with(|s| s.active() && s.node.as_deref() == Some(n) && s.quarantine.is_none()) {
                continue;
            }
            let steps: Vec<(String, String, Option<u32>)> = obj.with(|s| {
                s.journal
                    .iter()
                    .filter_map(|st| match st {
                        Step::Disk {
                            handle,
                            target,
                            unit,
                            ..
                        } => Some((handle.clone(), target.clone(), *unit)),
                        _ => None,
                    })
                    .collect()
            });
            let Ok(tree) = Self::live_tree(obj) else {
                continue;
            };
            let name = obj.with(|s| s.def.name().to_string());
            for (handle, target, unit) in steps {
                let view = tree
                    .disks()
                    .into_iter()
                    .find(|d| d.target_dev.as_deref() == Some(target.as_str()));
                let spec = match view.map(|v| disk_spec(&obj.uuid, &v, Some(&self.secrets))) {
                    Some(Ok(Some(mut spec))) => {
                        spec.unit = unit;
                        spec
                    }
                    Some(Err(e)) => {
                        tracing::error!(domain = %name, node = n, disk = %target, "reconcile: {e}");
                        continue;
                    }
                    _ => continue,
                };
                let lost = !listed.contains(&handle);
                match node.disks.attach(&spec).await {
                    Ok(dev) => {
                        if lost {
                            remapped += 1;
                            tracing::warn!(domain = %name, node = n, disk = %target, device = %dev, "reconcile: mapped again a disk missing from the backend");
                        }
                        obj.with(|s| set_device(&mut s.journal, &handle, dev));
                    }
                    Err(e) => {
                        tracing::error!(domain = %name, node = n, disk = %target, "reconcile: cannot map a disk again: {e}");
                        obj.with(|s| {
                            s.note(format!(
                                "disk {target} was lost while the daemon was down and could not be mapped again: {e}"
                            ))
                        });
                    }
                }
            }
        }
        match node.disks.tidy().await {
            Ok(gone) => {
                for g in gone {
                    tracing::warn!(
                        node = n,
                        "reconcile: removed {g}, which no mapped disk uses"
                    );
                }
            }
            Err(e) => tracing::error!(node = n, "reconcile: cannot tidy the disk backend: {e}"),
        }
        Ok((removed, remapped))
    }
}

/// What a backend can hold that no live domain owns.
#[derive(Clone, Copy)]
enum Orphan {
    Disk,
    Nic,
}

impl Driver {
    /// Removes, of the handles a backend `listed` for `node`, those no live domain owns (a
    /// quarantined domain owns everything named after it, wherever it is). Each is examined
    /// under its domain's job, so an operation running meanwhile is never undone. Returns
    /// how many were removed.
    async fn remove_orphans(&self, node: &Node, listed: &[String], kind: Orphan) -> usize {
        let n = node.spec.name.as_str();
        let mut removed = 0;
        for h in listed {
            let owner = handle_domain(h).and_then(|u| self.lookup_uuid(&u).ok());
            let _job = match &owner {
                Some(obj) => Some(obj.begin_internal_job("reconcile").await),
                None => None,
            };
            let owned = owner.as_ref().is_some_and(|o| {
                o.with(|s| {
                    s.quarantine.is_some()
                        || (s.active()
                            && s.node.as_deref() == Some(n)
                            && s.journal.iter().any(|st| st.handle() == Some(h.as_str())))
                })
            });
            if owned {
                continue;
            }
            let (r, done, noun) = match kind {
                Orphan::Disk => (node.disks.detach(h).await, "unmapped a disk", "disk"),
                Orphan::Nic => (node.nics.unplug(h).await, "removed a NIC port", "NIC port"),
            };
            match r {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(node = n, handle = %h, "reconcile: {done} no live domain owns");
                }
                Err(e) => {
                    tracing::error!(node = n, handle = %h, "reconcile: cannot remove an orphaned {noun}: {e}")
                }
            }
        }
        removed
    }
}

/// The domain a backend handle (`mv-<uuid>-…`) belongs to.
fn handle_domain(handle: &str) -> Option<uuid::Uuid> {
    let rest = handle.strip_prefix("mv-")?;
    uuid::Uuid::try_parse(rest.get(..32)?).ok()
}
