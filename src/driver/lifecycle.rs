//! The lifecycle state machine and its hardware pipelines (DESIGN §3).
//!
//! start:   place on a node ▸ journal ▸ map disks ∥ plug NICs ▸ boot device ▸ power on
//! destroy: power off (hard) ▸ unmap ∥ unplug ▸ release the node
//!
//! Every hardware step is written to the domain's journal (`<state_dir>/domains/<uuid>.json`)
//! before it runs. A failure undoes the journal in reverse order; after a crash, start-up
//! replays it: a half-done start is undone, a half-done stop is finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use uuid::Uuid;

use super::state::{st, DomainState, Paused, Running, Shutoff, Transition};
use super::store::{Found, Phase, Status, Step};
use super::stored::{LiveXml, StoredDef};
use super::{DomRef, DomState, DomainObj, Driver};
use crate::backend::{
    BackendError, BootDev, BootMode, BootRequest, DiskSpec, ErrorKind, NicSpec, Node, PowerState,
};
use crate::backend::{DiskAuth, Volume};
use crate::domain::def::{DomainDef, LiveInfo};
use crate::domain::devices::{DiskDef, InterfaceDef};
use crate::error::{VirError, VirResult};
use crate::events::EventKind;
use crate::secrets::Secrets;

/// `virDomainCreateFlags` accepted by the start APIs.
const START_PAUSED: u32 = 1;
const START_AUTODESTROY: u32 = 2;
const START_BYPASS_CACHE: u32 = 4;
const START_FORCE_BOOT: u32 = 8;
const START_VALIDATE: u32 = 16;
const START_RESET_NVRAM: u32 = 32;

fn handle_prefix(uuid: &Uuid) -> String {
    format!("mv-{}", uuid.simple())
}

/// The backend handle of a domain's disk.
pub(super) fn disk_handle(uuid: &Uuid, target: &str) -> String {
    format!("{}-{target}", handle_prefix(uuid))
}

/// The backend handle of a domain's NIC.
pub(super) fn nic_handle(uuid: &Uuid, mac: &str) -> String {
    format!("{}-{}", handle_prefix(uuid), mac.replace(':', ""))
}

/// What to map for one disk; `None` for a disk with no source (an empty CD-ROM). With
/// `secrets`, the key its `<auth>` names is looked up (a missing secret or value fails with
/// `VIR_ERR_NO_SECRET` naming the disk); without, only the reference is filled in.
pub(super) fn disk_spec(
    uuid: &Uuid,
    d: &DiskDef,
    secrets: Option<&Secrets>,
) -> VirResult<Option<DiskSpec>> {
    let (Some(source), Some(target)) = (source_desc(d), d.target_dev.clone()) else {
        return Ok(None);
    };
    let auth = match &d.auth {
        None => None,
        Some(a) => {
            let for_disk = |e: VirError| VirError {
                message: format!("{} (needed by disk {target})", e.message),
                ..e
            };
            let secret_uuid = match (&a.secret_uuid, &a.secret_usage) {
                (Some(u), _) => Uuid::parse_str(u.trim()).map_err(|_| {
                    VirError::xml(&format!(
                        "malformed secret uuid '{u}' in <auth> of disk {target}"
                    ))
                })?,
                (None, Some(usage)) => {
                    let kind = a.secret_type.as_deref().unwrap_or("");
                    let ty = crate::secrets::usage_type(kind).ok_or_else(|| {
                        VirError::xml(&format!(
                            "unknown secret type '{kind}' in <auth> of disk {target}"
                        ))
                    })?;
                    match secrets {
                        Some(s) => s.lookup_usage(ty, usage).map_err(for_disk)?.uuid,
                        None => Uuid::nil(),
                    }
                }
                (None, None) => {
                    return Err(VirError::xml(&format!(
                        "<auth> of disk {target} names no secret"
                    )))
                }
            };
            let key = match secrets {
                Some(s) => Some(s.value(&secret_uuid).map_err(for_disk)?),
                None => None,
            };
            Some(DiskAuth {
                username: a.username.clone(),
                secret_uuid: secret_uuid.to_string(),
                key,
            })
        }
    };
    let volume = super::volumes::disk_volume(d)?;
    if let (Some(s), Some(a)) = (secrets, &auth) {
        check_secret_usage(s, &volume, a, &target)?;
    }
    Ok(Some(DiskSpec {
        handle: disk_handle(uuid, &target),
        bus: d
            .target_bus
            .clone()
            .or_else(|| crate::domain::devices::bus_for_disk_name(&target).map(str::to_string)),
        target,
        source,
        readonly: d.readonly,
        auth,
        serial: d.serial.clone(),
        volume,
        unit: None,
    }))
}

/// Asks the node's disk backend whether it can present each disk (before anything moves);
/// returns its notes for GET_MESSAGES. A refusal is `VIR_ERR_CONFIG_UNSUPPORTED`.
pub(super) fn disk_notes(node: &Node, disks: &[DiskSpec]) -> VirResult<Vec<String>> {
    let mut notes = Vec::new();
    for d in disks {
        match node.disks.accepts(d) {
            Ok(Some(n)) => notes.push(n),
            Ok(None) => {}
            Err(e) if e.kind == ErrorKind::Unsupported => {
                return Err(VirError::config_unsupported(&e.msg))
            }
            Err(e) => return Err(VirError::operation_failed(&e.msg)),
        }
    }
    Ok(notes)
}

/// A disk's secret must be of the kind its protocol uses (libvirt's check, with its
/// `VIR_ERR_INVALID_ARG`): `ceph` for rbd, `iscsi` for iSCSI CHAP.
fn check_secret_usage(
    secrets: &Secrets,
    volume: &Volume,
    auth: &DiskAuth,
    target: &str,
) -> VirResult<()> {
    let want = match volume {
        Volume::Rbd { .. } => "ceph",
        Volume::Iscsi { .. } => "iscsi",
        _ => return Ok(()),
    };
    let Ok(u) = Uuid::parse_str(&auth.secret_uuid) else {
        return Ok(());
    };
    let Ok(secret) = secrets.lookup_uuid(&u) else {
        return Ok(());
    };
    let kind = crate::secrets::usage_name(secret.usage_type);
    if kind != want {
        return Err(VirError::invalid_arg(&format!(
            "secret with uuid {u} is of type '{kind}' not expected '{want}' type (disk {target})"
        )));
    }
    Ok(())
}

/// Disks to map for a definition, in boot order: disks with `<boot order>` by that order,
/// then the others in definition order. Each gets its position on the host's controller
/// (`unit`, 1-based), so the boot disk is the first namespace.
fn disk_plan(uuid: &Uuid, def: &DomainDef, secrets: Option<&Secrets>) -> VirResult<Vec<DiskSpec>> {
    let mut out = Vec::new();
    for d in def.disks() {
        if let Some(spec) = disk_spec(uuid, &d, secrets)? {
            out.push((d.boot_order.unwrap_or(u32::MAX), spec));
        }
    }
    out.sort_by_key(|(order, _)| *order);
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut spec))| {
            spec.unit = Some(i as u32 + 1);
            spec
        })
        .collect())
}

/// A human-readable name of what a disk connects to; `None` for a disk with no source
/// (an empty CD-ROM), which maps nothing.
fn source_desc(d: &DiskDef) -> Option<String> {
    let s = &d.source;
    if let Some(p) = &s.protocol {
        return Some(format!("{p}:{}", s.name.as_deref().unwrap_or("")));
    }
    if let (Some(pool), Some(vol)) = (&s.pool, &s.volume) {
        return Some(format!("volume:{pool}/{vol}"));
    }
    s.file
        .clone()
        .or_else(|| s.dev.clone())
        .or_else(|| s.dir.clone())
}

/// What to plug for one interface (every interface has a MAC once defaults are filled).
/// An interface without `interfaceid` gets an `iface-id` derived from the domain and MAC, so
/// the same interface keeps the same id across restarts and re-plugs.
pub(super) fn nic_spec(uuid: &Uuid, i: &InterfaceDef) -> Option<NicSpec> {
    let mac = i.mac.clone()?;
    let interface_id = i
        .interface_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v5(uuid, mac.as_bytes()).to_string());
    Some(NicSpec {
        handle: nic_handle(uuid, &mac),
        mac,
        bridge: match i.iface_type.as_str() {
            "bridge" => i.source.bridge.clone(),
            _ => None,
        },
        interface_id: Some(interface_id),
        domain_uuid: uuid.to_string(),
        representor: None,
    })
}

/// NIC functions to plug for a definition.
fn nic_plan(uuid: &Uuid, def: &DomainDef) -> Vec<NicSpec> {
    def.interfaces()
        .iter()
        .filter_map(|i| nic_spec(uuid, i))
        .collect()
}

/// Checks that every interface of a definition can be plugged on bare metal and every disk
/// names a volume a DPU can connect.
pub(super) fn check_devices(def: &DomainDef) -> VirResult<()> {
    def.interfaces()
        .iter()
        .try_for_each(crate::domain::devices::check_interface)?;
    def.disks()
        .iter()
        .try_for_each(|d| super::volumes::disk_volume(d).map(drop))
}

/// Handles a live definition owns: what its journal may hold.
pub(super) fn owned_handles(uuid: &Uuid, def: &DomainDef) -> Vec<String> {
    let disks = def.disks();
    let disks = disks.iter().filter(|d| source_desc(d).is_some());
    disks
        .filter_map(|d| d.target_dev.as_deref().map(|t| disk_handle(uuid, t)))
        .chain(nic_plan(uuid, def).into_iter().map(|n| n.handle))
        .collect()
}

/// Shows each plugged interface's representor as its `<target dev>` in the live definition,
/// unless the interface names its own host-side device (nova's tap names are kept).
pub(super) fn show_representors(uuid: &Uuid, def: &mut DomainDef, journal: &[Step]) {
    let reps: Vec<(usize, String)> = def
        .interfaces()
        .iter()
        .filter(|i| i.target_dev.is_none())
        .filter_map(|i| {
            let h = nic_handle(uuid, i.mac.as_deref()?);
            journal.iter().find_map(|s| match s {
                Step::Nic {
                    handle,
                    representor: Some(r),
                    ..
                } if *handle == h => Some((i.index, r.clone())),
                _ => None,
            })
        })
        .collect();
    for (index, rep) in reps {
        def.set_interface_target(index, &rep);
    }
}

/// The BMC boot override for a definition: `<os><boot dev>` first, then per-device boot
/// order, else the disk when there is one, else the network.
fn boot_dev(def: &DomainDef) -> BootDev {
    let from = |d: &str| match d {
        "network" => Some(BootDev::Network),
        "cdrom" => Some(BootDev::Cdrom),
        "hd" => Some(BootDev::Disk),
        _ => None,
    };
    if let Some(b) = def.boot_devs().iter().find_map(|d| from(d)) {
        return b;
    }
    let disk_order = def.disks().iter().filter_map(|d| d.boot_order).min();
    let nic_order = def.interfaces().iter().filter_map(|i| i.boot_order).min();
    match (disk_order, nic_order) {
        (Some(d), Some(n)) if n < d => BootDev::Network,
        (None, Some(_)) => BootDev::Network,
        _ if def.disks().is_empty() => BootDev::Network,
        _ => BootDev::Disk,
    }
}

/// The BMC boot override for a definition on a node.
fn boot_request(def: &DomainDef, node: &Node) -> BootRequest {
    BootRequest {
        dev: boot_dev(def),
        persistent: node.spec.boot_persistent,
        mode: match def.firmware() {
            Some("efi") => Some(BootMode::Uefi),
            Some("bios") => Some(BootMode::Legacy),
            _ => None,
        },
    }
}

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
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

impl Driver {
    // ------------------------------------------------------------------ placement

    fn place(&self, uuid: Uuid, def: &DomainDef) -> VirResult<Node> {
        let cpus = def.max_vcpus();
        let mem = def.memory_kib();
        let fits = |n: &Node| n.spec.cpus() >= cpus && n.spec.memory_kib >= mem;
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = if let Some(pin) = def.node_pin() {
            let n = self.node(&pin).ok_or_else(|| {
                VirError::config_unsupported(&format!("node '{pin}' is not part of this host"))
            })?;
            if let Some(other) = p.busy.get(&pin) {
                if *other != uuid {
                    return Err(VirError::operation_failed(&format!(
                        "node '{pin}' is in use by domain {other}"
                    )));
                }
            }
            if !fits(n) {
                return Err(VirError::operation_failed(&format!(
                    "node '{pin}' has {} CPUs and {} MiB of memory, the domain needs {cpus} CPUs and {} MiB",
                    n.spec.cpus(),
                    n.spec.memory_kib / 1024,
                    mem / 1024
                )));
            }
            n.clone()
        } else {
            let free = |n: &&Node| !p.busy.contains_key(&n.spec.name) && fits(n);
            let sticky = self
                .nodes
                .iter()
                .filter(free)
                .find(|n| p.history.get(&n.spec.name) == Some(&uuid));
            let unused = || {
                self.nodes
                    .iter()
                    .filter(free)
                    .find(|n| !p.history.contains_key(&n.spec.name))
            };
            let any = || self.nodes.iter().find(free);
            sticky
                .or_else(unused)
                .or_else(any)
                .cloned()
                .ok_or_else(|| {
                    VirError::operation_failed(&format!(
                        "no free node with at least {cpus} CPUs and {} MiB of memory",
                        mem / 1024
                    ))
                })?
        };
        p.busy.insert(chosen.spec.name.clone(), uuid);
        if p.history.get(&chosen.spec.name) != Some(&uuid) {
            p.history.insert(chosen.spec.name.clone(), uuid);
            if let Err(e) = self.store.save_node_history(&p.history) {
                tracing::warn!("cannot save node history: {e}");
            }
        }
        Ok(chosen)
    }

    fn release(&self, node: &str, uuid: Uuid) {
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if p.busy.get(node) == Some(&uuid) {
            p.busy.remove(node);
        }
    }

    // ------------------------------------------------------------------ undo

    /// Undoes journal entries in reverse order; returns the failures (already logged).
    async fn undo(&self, node: &Node, journal: &[Step], name: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if journal.contains(&Step::PowerOn) {
            if let Err(e) = node.power.off(true).await {
                errors.push(format!("power off of {}: {e}", node.spec.name));
            } else if let Err(e) = wait_power(node, PowerState::Off).await {
                errors.push(format!("power off of {}: {e}", node.spec.name));
            }
        }
        let undo_disks = journal.iter().rev().filter_map(|s| match s {
            Step::Disk { handle, target, .. } => Some((handle, target)),
            _ => None,
        });
        let undo_nics = journal.iter().rev().filter_map(|s| match s {
            Step::Nic { handle, mac, .. } => Some((handle, mac)),
            _ => None,
        });
        let disks = join_all(undo_disks.map(|(h, t)| async move {
            node.disks
                .detach(h)
                .await
                .map_err(|e| format!("unmapping disk {t}: {e}"))
        }));
        let nics = join_all(undo_nics.map(|(h, m)| async move {
            node.nics
                .unplug(h)
                .await
                .map_err(|e| format!("unplugging NIC {m}: {e}"))
        }));
        let (d, n) = tokio::join!(disks, nics);
        for r in d.into_iter().chain(n) {
            if let Err(e) = r {
                tracing::error!(domain = name, node = %node.spec.name, "cleanup failed: {e}");
                errors.push(e);
            }
        }
        errors
    }

    // ------------------------------------------------------------------ start

    /// Starts an inactive domain; the caller holds its job.
    async fn start_locked(&self, obj: &Arc<DomainObj>, paused: bool) -> VirResult<DomRef> {
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
        let node = self.place(obj.uuid, &tree)?;
        let notes = match disk_notes(&node, &disks) {
            Ok(n) => n,
            Err(e) => {
                self.release(&node.spec.name, obj.uuid);
                return Err(e);
            }
        };
        let mut journal: Vec<Step> = disks
            .iter()
            .map(|d| Step::Disk {
                handle: d.handle.clone(),
                target: d.target.clone(),
                device: None,
                unit: d.unit,
            })
            .chain(nics.iter().map(|n| Step::Nic {
                handle: n.handle.clone(),
                mac: n.mac.clone(),
                representor: None,
            }))
            .collect();
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
                &disks,
                &nics,
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
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_start(
        &self,
        node: &Node,
        def: &DomainDef,
        disks: &[DiskSpec],
        nics: &[NicSpec],
        journal: &mut Vec<Step>,
        status: &mut Status,
        paused: bool,
        cancel: &mut tokio::sync::watch::Receiver<u64>,
    ) -> VirResult<()> {
        let n = &node.spec.name;
        let mapped = join_all(disks.iter().map(|d| node.disks.attach(d)));
        let plugged = join_all(nics.iter().map(|x| node.nics.plug(x)));
        let (mapped, plugged) = tokio::join!(mapped, plugged);
        // The first failure, through the one backend error map (a timeout stays a timeout).
        let mut first_err = None;
        for (spec, r) in disks.iter().zip(mapped) {
            match r {
                Ok(dev) => set_device(journal, &spec.handle, dev),
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        super::backend_error(
                            &format!("cannot map disk {} ({}) on {n}", spec.target, spec.source),
                            &e,
                        )
                    });
                }
            }
        }
        for (spec, r) in nics.iter().zip(plugged) {
            match r {
                Ok(rep) => set_device(journal, &spec.handle, rep),
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        super::backend_error(&format!("cannot plug NIC {} on {n}", spec.mac), &e)
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
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

    /// Starts the power watcher, NIC and disk reconciliation, disk healing and autostart.
    pub fn start_background(self: &Arc<Self>) {
        for node in self.nodes.iter().cloned() {
            let (d, n) = (self.clone(), node.clone());
            tokio::spawn(async move {
                let r = until_ok("NIC ports", &n.spec.name, || d.reconcile_nics(&n)).await;
                if r.0 + r.1 > 0 {
                    tracing::warn!(node = %n.spec.name, removed = r.0, replugged = r.1, "reconciled NIC ports");
                }
            });
            let d = self.clone();
            tokio::spawn(async move {
                let r = until_ok("disks", &node.spec.name, || d.reconcile_disks(&node)).await;
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
                        Err(why) => tracing::warn!(
                            uuid = ?uuid,
                            "released live state cannot be read ({why}): forgotten; its disks and NICs are reclaimed as orphans, its server's power is left as it is"
                        ),
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
                self.placement
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .busy
                    .insert(status.node.clone(), status.uuid);
                tracing::info!(domain = %status.name, id = status.id, node = %status.node, "reattached to live domain");
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
        self.placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .busy
            .insert(status.node, status.uuid);
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
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let last: Vec<String> = p
            .history
            .iter()
            .filter(|(_, u)| **u == uuid)
            .map(|(n, _)| n.clone())
            .collect();
        for n in last {
            p.busy.insert(n, uuid);
        }
    }
}

pub(super) fn set_device(journal: &mut [Step], handle: &str, dev: String) {
    for s in journal.iter_mut() {
        match s {
            Step::Disk {
                handle: h, device, ..
            } if h == handle => *device = Some(dev.clone()),
            Step::Nic {
                handle: h,
                representor,
                ..
            } if h == handle => *representor = Some(dev.clone()),
            _ => {}
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
