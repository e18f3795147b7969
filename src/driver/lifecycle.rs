//! The lifecycle state machine and its hardware pipelines (DESIGN §3).
//!
//! start:   place on a node ▸ journal ▸ map disks ∥ plug NICs ▸ boot device ▸ power on
//! destroy: power off (hard) ▸ unmap ∥ unplug ▸ release the node
//!
//! Every hardware step is written to the domain's journal (`<state_dir>/domains/<uuid>.json`)
//! before it runs. A failure undoes the journal in reverse order; after a crash, start-up
//! replays it: a half-done start is undone, a half-done stop is finished.
//!
//! Around this file: `plan` works out what a start asks of the hardware, `placement` picks
//! the node, `steps` runs and undoes the journaled disk and NIC steps (shared with
//! hot-plug), `recovery` replays journals at start-up, and `state` is the transition table
//! every state change here goes through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::plan::{
    boot_request, check_devices, disk_notes, disk_plan, nic_plan, show_representors,
};
use super::state::{st, DomainState, Shutoff, Transition};
use super::steps::{self, Plug};
use super::store::{Phase, Status, Step};
use super::stored::{LiveXml, StoredDef};
use super::{DomRef, DomState, DomainObj, Driver};
use crate::backend::{BackendError, ErrorKind, Node, PowerState};
use crate::domain::def::{DomainDef, LiveInfo};
use crate::error::{VirError, VirResult};
use crate::events::EventKind;

/// `virDomainCreateFlags` accepted by the start APIs.
const START_PAUSED: u32 = 1;
const START_AUTODESTROY: u32 = 2;
const START_BYPASS_CACHE: u32 = 4;
const START_FORCE_BOOT: u32 = 8;
const START_VALIDATE: u32 = 16;
const START_RESET_NVRAM: u32 = 32;

/// Polls the BMC until it reports `want`, within the node's power on/off time limit. Slow
/// BMCs are normal (a Redfish power on can take a minute): the pause grows to 2 s.
async fn wait_power(node: &Node, want: PowerState) -> Result<(), BackendError> {
    let limit = match want {
        PowerState::Off => node.spec.power_off_timeout,
        _ => node.spec.power_on_timeout,
    };
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(20);
    let mut last;
    // A BMC that announces power changes (OpenBMC) is read again as soon as it does.
    let mut events = node.power.power_events();
    if let Some(rx) = events.as_mut() {
        rx.borrow_and_update();
    }
    loop {
        match node.power.state().await {
            Ok(r) if r.state == want => return Ok(()),
            Ok(r) => last = format!("it reports {:?}", r.state),
            Err(e) => {
                tracing::warn!(node = %node.spec.name, "power state query failed: {e}");
                if e.kind == ErrorKind::Auth {
                    return Err(e);
                }
                last = e.to_string();
            }
        }
        if Instant::now() >= deadline {
            return Err(BackendError::with_kind(
                ErrorKind::Timeout,
                format!(
                    "the BMC did not report power {want:?} within {}s ({last})",
                    limit.as_secs_f64()
                ),
            ));
        }
        let sleep =
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        match events.as_mut() {
            Some(rx) => tokio::select! {
                _ = sleep => {}
                r = rx.changed() => if r.is_err() { events = None },
            },
            None => sleep.await,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

impl Driver {
    // ------------------------------------------------------------------ undo

    /// Undoes journal entries in reverse order; returns the failures (already logged).
    pub(super) async fn undo(&self, node: &Node, journal: &[Step], name: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if journal.contains(&Step::PowerOn) {
            if let Err(e) = node.power.off(true).await {
                errors.push(format!("power off of {}: {e}", node.spec.name));
            } else if let Err(e) = wait_power(node, PowerState::Off).await {
                errors.push(format!("power off of {}: {e}", node.spec.name));
            }
        }
        for e in steps::undo_all(node, journal).await {
            tracing::error!(domain = name, node = %node.spec.name, "cleanup failed: {e}");
            errors.push(e.to_string());
        }
        errors
    }

    // ------------------------------------------------------------------ start

    /// Starts an inactive domain; the caller holds its job.
    pub(super) async fn start_locked(
        &self,
        obj: &Arc<DomainObj>,
        paused: bool,
    ) -> VirResult<DomRef> {
        let (def, persistent, removed, active) =
            obj.with(|s| (s.def.clone(), s.persistent, s.removed, s.active()));
        if removed {
            return Err(VirError::no_domain_uuid(&obj.uuid, Some(def.name())));
        }
        if active {
            return Err(VirError::operation_invalid("domain is already running"));
        }
        let name = def.name().to_string();
        let mut tree = def.tree()?;
        tree.make_live();
        // Secrets first: a disk whose key is missing fails the start before anything moves.
        let disks = disk_plan(&obj.uuid, &tree, Some(&self.secrets))?;
        check_devices(&tree)?;
        let nics = nic_plan(&obj.uuid, &tree);
        let node = self.place(obj.uuid, &tree).await?;
        let notes = match disk_notes(&node, &disks).await {
            Ok(n) => n,
            Err(e) => {
                self.release(&node.spec.name, obj.uuid);
                return Err(e);
            }
        };
        let plugs: Vec<Plug> = (disks.iter().map(Plug::Disk))
            .chain(nics.iter().map(Plug::Nic))
            .collect();
        let mut journal: Vec<Step> = plugs.iter().map(Plug::record).collect();
        let mut status = Status {
            uuid: obj.uuid,
            name: name.clone(),
            id: -1,
            state: DomainState::DEFINED.code(),
            reason: DomainState::DEFINED.reason_code(),
            node: node.spec.name.clone(),
            phase: Phase::Starting,
            persistent,
            xml: def.config_xml().to_string(),
            journal: journal.clone(),
            stop_reason: None,
        };
        if let Err(e) = self.store.save_status(&status).await {
            self.release(&node.spec.name, obj.uuid);
            return Err(VirError::operation_failed(&format!(
                "cannot record start of domain '{name}': {e}"
            )));
        }
        tracing::info!(domain = %name, node = %node.spec.name, disks = disks.len(), nics = nics.len(), "starting");
        crate::crash::point("start:recorded");

        let mut cancel = obj.cancel_watch();
        let mut result = self
            .run_start(
                &node,
                &tree,
                &plugs,
                &mut journal,
                &mut status,
                paused,
                &mut cancel,
            )
            .await;
        // The run is recorded as active (durably) before anyone is told it started: a
        // restart that found it still "starting" would undo it under its workload.
        let mut live = None;
        if result.is_ok() {
            crate::crash::point("start:powered");
            let id = self.fresh_id();
            show_representors(&obj.uuid, &mut tree, &journal);
            let live_def = StoredDef::new(&tree);
            let live_xml = Arc::new(LiveXml::format(
                &tree,
                &LiveInfo {
                    id,
                    node: node.spec.name.clone(),
                },
            ));
            // The state the run will have, recorded first (the transition itself comes
            // below, with its events).
            let to = match obj.with(|s| s.state()).next(Transition::Started { paused }) {
                Ok((to, _)) => to,
                Err(e) => return Err(VirError::internal(&e.to_string())),
            };
            status.id = id;
            status.state = to.code();
            status.reason = to.reason_code();
            status.phase = Phase::Active;
            status.xml = live_def.config_xml().to_string();
            status.journal = journal.clone();
            match self.store.save_status(&status).await {
                Ok(()) => {
                    crate::crash::point("start:active");
                    live = Some((id, live_def, live_xml))
                }
                Err(e) => {
                    result = Err(VirError::operation_failed(&format!(
                        "cannot record the start of domain '{name}': {e}"
                    )))
                }
            }
        }
        let Some((id, live_def, live_xml)) = live else {
            let err = result
                .err()
                .unwrap_or_else(|| VirError::internal("start not recorded"));
            let cleanup = self.undo(&node, &journal, &name).await;
            self.release(&node.spec.name, obj.uuid);
            if let Err(e) = self.store.delete_status(&obj.uuid).await {
                tracing::error!(domain = %name, "cannot delete status: {e}");
            }
            obj.with(|s| {
                s.apply(Transition::StartFailed);
                if !cleanup.is_empty() {
                    s.note(format!(
                        "cleanup after failed start left: {}",
                        cleanup.join("; ")
                    ));
                }
            });
            tracing::warn!(domain = %name, "start failed and was rolled back: {err}");
            return Err(err);
        };
        let events = obj.with(|s| {
            let events = s.apply(Transition::Started { paused });
            s.id = id;
            s.node = Some(node.spec.name.clone());
            s.journal = journal;
            s.started = Some(Instant::now());
            s.shutdown_requested = false;
            s.power_grace_until = None;
            s.bmc_lost = None;
            s.staged_seen_on = false;
            s.set_live_def(live_def, live_xml);
            for n in notes {
                s.note(n);
            }
            events
        });
        self.set_id(obj, -1, id);
        let r = obj.dom_ref();
        self.emit_all(&r, &events);
        tracing::info!(domain = %name, id, node = %node.spec.name, paused, "started");
        self.serve_serial_ports(obj, &tree);
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_start(
        &self,
        node: &Node,
        def: &DomainDef,
        plugs: &[Plug<'_>],
        journal: &mut Vec<Step>,
        status: &mut Status,
        paused: bool,
        cancel: &mut tokio::sync::watch::Receiver<u64>,
    ) -> VirResult<()> {
        steps::run_all(node, plugs, journal).await?;
        crate::crash::point("start:mapped");
        if paused {
            return Ok(());
        }
        // A destroy may cancel the start while it waits for the BMC (which can take minutes
        // or hang). Disk and NIC steps are not cut short: each has its own time limit, and a
        // backend call abandoned half-way could leave behind what the undo cannot see.
        let aborted = || {
            VirError::operation_aborted(&format!(
                "the start of domain '{}' was cancelled by virDomainDestroy",
                def.name()
            ))
        };
        if cancel.has_changed().unwrap_or(false) {
            return Err(aborted());
        }
        tokio::select! {
            r = self.power_on(node, def, journal, status) => r,
            _ = cancel.changed() => Err(aborted()),
        }
    }

    /// Boot device, then power on, then wait for On. A server found already on (left on out
    /// of band) is force-restarted instead, so it boots as the domain asks.
    async fn power_on(
        &self,
        node: &Node,
        def: &DomainDef,
        journal: &mut Vec<Step>,
        status: &mut Status,
    ) -> VirResult<()> {
        let n = &node.spec.name;
        let before = node.power.state().await.map_err(|e| {
            super::backend_error(&format!("cannot read the power state of node {n}"), &e)
        })?;
        node.power
            .set_boot(&boot_request(def, node))
            .await
            .map_err(|e| {
                super::backend_error(&format!("cannot set the boot device of node {n}"), &e)
            })?;
        journal.push(Step::PowerOn);
        status.journal = journal.clone();
        self.store
            .save_status(status)
            .await
            .map_err(|e| VirError::operation_failed(&format!("cannot record power on: {e}")))?;
        crate::crash::point("start:power-journaled");
        let on = if before.state == PowerState::Off {
            node.power.on().await
        } else {
            tracing::warn!(node = %n, state = ?before.state, "server was already powered on; force-restarting it to boot the domain");
            node.power.restart(true).await
        };
        on.map_err(|e| super::backend_error(&format!("cannot power on node {n}"), &e))?;
        wait_power(node, PowerState::On)
            .await
            .map_err(|e| super::backend_error(&format!("power on of node {n}"), &e))
    }

    /// `virDomainCreate(WithFlags)`.
    pub async fn create(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<DomRef> {
        VirError::check_flags(
            flags,
            START_PAUSED
                | START_AUTODESTROY
                | START_BYPASS_CACHE
                | START_FORCE_BOOT
                | START_RESET_NVRAM,
            "virDomainCreateWithFlags",
        )?;
        let _job = obj.begin_job(super::START_JOB, self.job_wait()).await?;
        self.start_locked(obj, flags & START_PAUSED != 0).await
    }

    /// `virDomainCreateXML`: starts a transient domain (or runs a defined one with this XML).
    pub async fn create_xml(&self, xml: &str, flags: u32) -> VirResult<DomRef> {
        VirError::check_flags(
            flags,
            START_PAUSED
                | START_AUTODESTROY
                | START_BYPASS_CACHE
                | START_FORCE_BOOT
                | START_VALIDATE
                | START_RESET_NVRAM,
            "virDomainCreateXML",
        )?;
        if flags & START_VALIDATE != 0 {
            crate::domain::schema::validate(&self.schema, xml).map_err(|e| {
                VirError::xml(&format!(
                    "XML document failed to validate against schema: {e}"
                ))
            })?;
        }
        let def = StoredDef::parse_xml(xml)?;
        check_devices(&def.tree()?)?;
        let paused = flags & START_PAUSED != 0;
        match self.check_unique(&def, true)? {
            Some(obj) => {
                let _job = obj.begin_job(super::START_JOB, self.job_wait()).await?;
                let prev = obj.with(|s| {
                    if s.active() {
                        return Err(VirError::operation_invalid(&format!(
                            "domain '{}' is already active",
                            s.def.name()
                        )));
                    }
                    let prev = s.def.clone();
                    s.new_def = Some(prev.clone());
                    s.def = def.clone();
                    Ok(prev)
                })?;
                let r = self.start_locked(&obj, paused).await;
                if r.is_err() {
                    obj.with(|s| {
                        s.def = prev;
                        s.new_def = None;
                    });
                }
                r
            }
            None => {
                let obj = DomainObj::new(def.uuid(), DomState::new(def.clone(), false));
                let _job = obj.begin_job(super::START_JOB, self.job_wait()).await?;
                if !self.try_insert(&obj, def.name()) {
                    return Err(VirError::operation_invalid(&format!(
                        "domain '{}' is already being started",
                        def.name()
                    )));
                }
                let r = self.start_locked(&obj, paused).await;
                if r.is_err() {
                    self.remove(&obj);
                }
                r
            }
        }
    }

    // ------------------------------------------------------------------ stop

    /// Stops an active domain; the caller holds its job.
    pub(super) async fn stop_locked(
        &self,
        obj: &Arc<DomainObj>,
        why: Shutoff,
        power_off: bool,
    ) -> VirResult<()> {
        let (node_name, journal, name) =
            obj.with(|s| (s.node.clone(), s.journal.clone(), s.def.name().to_string()));
        let node = node_name
            .as_deref()
            .and_then(|n| self.node(n))
            .cloned()
            .ok_or_else(|| VirError::internal(&format!("domain '{name}' has no node")))?;
        // Recorded before the power goes off: a restart mid-stop finishes the stop.
        self.persist_status(obj, Phase::Stopping, Some(why as i32))
            .await?;
        crate::crash::point("stop:recorded");
        if power_off {
            let n = &node.spec.name;
            let r = match node.power.off(true).await {
                Ok(()) => wait_power(&node, PowerState::Off)
                    .await
                    .map_err(|e| super::backend_error(&format!("power off of node {n}"), &e)),
                Err(e) => Err(super::backend_error(
                    &format!("cannot power off node {n}"),
                    &e,
                )),
            };
            if let Err(e) = r {
                let _ = self.persist_active(obj).await;
                return Err(e);
            }
        }
        crate::crash::point("stop:powered-off");
        let rest: Vec<Step> = journal
            .into_iter()
            .filter(|s| *s != Step::PowerOn)
            .collect();
        let errors = self.undo(&node, &rest, &name).await;
        crate::crash::point("stop:unmapped");
        self.release(&node.spec.name, obj.uuid);
        if let Err(e) = self.store.delete_status(&obj.uuid).await {
            tracing::error!(domain = %name, "cannot delete status: {e}");
        }
        let (old_id, persistent, events) = obj.with(|s| {
            let old = s.id;
            let events = s.apply(Transition::Stopped(why));
            s.id = -1;
            s.node = None;
            s.journal.clear();
            s.started = None;
            s.shutdown_requested = false;
            s.power_grace_until = None;
            s.bmc_lost = None;
            s.staged_seen_on = false;
            s.updated = false;
            s.live_xml = None;
            if let Some(d) = s.new_def.take() {
                s.def = d;
            }
            if !errors.is_empty() {
                s.messages
                    .push(format!("cleanup after stop left: {}", errors.join("; ")));
            }
            (old, s.persistent, events)
        });
        self.set_id(obj, old_id, -1);
        let r = obj.dom_ref();
        if !persistent {
            self.remove(obj);
        }
        self.emit_all(&r, &events);
        tracing::info!(domain = %name, node = %node.spec.name, "stopped");
        Ok(())
    }

    fn check_active(obj: &DomainObj) -> VirResult<(i32, Option<String>)> {
        obj.with(|s| {
            if s.removed {
                return Err(VirError::no_domain_uuid(&obj.uuid, Some(s.def.name())));
            }
            if !s.active() {
                return Err(VirError::operation_invalid("domain is not running"));
            }
            Ok((s.state().code(), s.node.clone()))
        })
    }

    /// `virDomainDestroy(Flags)`: synchronous, ends SHUTOFF/DESTROYED.
    pub async fn destroy(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<()> {
        VirError::check_flags(flags, 1 | 2, "virDomainDestroyFlags")?;
        let (_job, cancelled) = obj.begin_destroy_job(self.job_wait()).await?;
        if cancelled && obj.with(|s| !s.active() && !s.removed) {
            // The start gave up and rolled back: the server is off, nothing is mapped.
            obj.with(|s| s.apply(Transition::StartCancelled));
            return Ok(());
        }
        Self::check_active(obj)?;
        self.stop_locked(obj, Shutoff::Destroyed, true).await
    }

    /// `VIR_DOMAIN_START_AUTODESTROY`: the connection that started run `id` of a domain has
    /// closed; destroy that run (and only that run: a later start is left alone).
    pub async fn autodestroy(&self, uuid: Uuid, id: i32) {
        let Ok(obj) = self.lookup_uuid(&uuid) else {
            return;
        };
        let _job = obj.begin_internal_job("autodestroy").await;
        if obj.with(|s| s.removed || !s.active() || s.id != id) {
            return;
        }
        let name = obj.with(|s| s.def.name().to_string());
        tracing::info!(domain = %name, "its connection closed: auto-destroying");
        if let Err(e) = self.stop_locked(&obj, Shutoff::Destroyed, true).await {
            tracing::error!(domain = %name, "auto-destroy failed: {e}");
        }
    }

    fn check_power_mode(flags: u32, api: &str) -> VirResult<()> {
        VirError::check_flags(flags, 0x1f, api)?;
        // ACPI power button (1) and paravirt (16) map to the BMC's graceful action; agent,
        // initctl and signal modes need a guest OS channel bare metal does not have.
        if flags != 0 && flags & (1 | 16) == 0 {
            return Err(VirError::argument_unsupported(
                "bare-metal servers support only the ACPI power button mode",
            ));
        }
        Ok(())
    }

    /// `virDomainShutdown(Flags)`: asks the BMC for a graceful power off and returns at once;
    /// the power watcher turns the domain SHUTOFF when the server is seen off.
    pub async fn shutdown(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<()> {
        Self::check_power_mode(flags, "virDomainShutdownFlags")?;
        let _job = obj.begin_job("virDomainShutdown", self.job_wait()).await?;
        let (state, node) = Self::check_active(obj)?;
        if state == st::PAUSED {
            // Staged: the server is already off, so shutting down only releases the hardware.
            let r = obj.dom_ref();
            let events = obj.with(|s| s.apply(Transition::ShutdownFinished));
            self.emit_all(&r, &events);
            return self.stop_locked(obj, Shutoff::Shutdown, false).await;
        }
        let node = node
            .and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("running domain has no node"))?;
        // A restart's grace ends when the watcher reads On; a server shut down before the
        // watcher's next round would never be read On, and its Off would be taken for the
        // restart until the grace ran out. A server that reads On now has restarted.
        if obj.with(|s| s.power_grace_until.is_some())
            && node
                .power
                .state()
                .await
                .is_ok_and(|r| r.state == PowerState::On)
        {
            obj.with(|s| s.power_grace_until = None);
        }
        node.power.off(false).await.map_err(|e| {
            super::backend_error(&format!("graceful shutdown of node {}", node.spec.name), &e)
        })?;
        obj.with(|s| s.shutdown_requested = true);
        Ok(())
    }

    async fn restart(&self, obj: &Arc<DomainObj>, hard: bool) -> VirResult<()> {
        let _job = obj.begin_job("virDomainReboot", self.job_wait()).await?;
        let (state, node) = Self::check_active(obj)?;
        if state != st::RUNNING {
            return Err(VirError::operation_invalid(
                "domain is staged with its server powered off; resume it first",
            ));
        }
        let node = node
            .and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("running domain has no node"))?;
        // A restarting server reads Off (or PoweringOn) for a while: the watcher must not take
        // that for a shutdown.
        let grace = Instant::now() + node.spec.power_on_timeout;
        obj.with(|s| s.power_grace_until = Some(grace));
        node.power.restart(hard).await.map_err(|e| {
            obj.with(|s| s.power_grace_until = None);
            super::backend_error(&format!("restart of node {}", node.spec.name), &e)
        })?;
        let r = obj.dom_ref();
        self.emit(&r, EventKind::Reboot);
        Ok(())
    }

    /// `virDomainReboot`: BMC graceful restart.
    pub async fn reboot(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<()> {
        Self::check_power_mode(flags, "virDomainReboot")?;
        self.restart(obj, false).await
    }

    /// `virDomainReset`: BMC forced restart.
    pub async fn reset(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<()> {
        VirError::check_flags(flags, 0, "virDomainReset")?;
        self.restart(obj, true).await
    }

    /// `virDomainResume`: powers on a staged domain.
    pub async fn resume(&self, obj: &Arc<DomainObj>) -> VirResult<()> {
        let _job = obj.begin_job("virDomainResume", self.job_wait()).await?;
        let (state, node) = Self::check_active(obj)?;
        if state == st::RUNNING {
            return Err(VirError::operation_invalid("domain is already running"));
        }
        let node = node
            .and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("staged domain has no node"))?;
        let (def, mut journal, name, id, persistent) = obj.with(|s| {
            (
                s.def.clone(),
                s.journal.clone(),
                s.def.name().to_string(),
                s.id,
                s.persistent,
            )
        });
        let mut status = Status {
            uuid: obj.uuid,
            name,
            id,
            state,
            reason: obj.with(|s| s.state().reason_code()),
            node: node.spec.name.clone(),
            phase: Phase::Active,
            persistent,
            xml: def.config_xml().to_string(),
            journal: journal.clone(),
            stop_reason: None,
        };
        let tree = def.tree()?;
        if let Err(e) = self.power_on(&node, &tree, &mut journal, &mut status).await {
            // Leave it staged; make sure it is off again.
            let _ = node.power.off(true).await;
            return Err(e);
        }
        let events = obj.with(|s| {
            s.journal = journal;
            s.apply(Transition::Resumed)
        });
        let _ = self.persist_active(obj).await;
        let r = obj.dom_ref();
        self.emit_all(&r, &events);
        Ok(())
    }
}
