//! What a domain asks of the hardware, worked out before anything moves: the backend
//! handles of its disks and NICs, their specs (with the secrets a disk needs), the checks
//! a start makes first, and the boot request for the BMC.

use uuid::Uuid;

use super::store::Step;
use crate::backend::{BootDev, BootMode, BootRequest, DiskSpec, ErrorKind, NicSpec, Node};
use crate::backend::{DiskAuth, Volume};
use crate::domain::def::DomainDef;
use crate::domain::devices::{DiskDef, InterfaceDef};
use crate::error::{VirError, VirResult};
use crate::secrets::Secrets;

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
        qos: disk_qos(d)?,
    }))
}

/// Asks the node's disk backend whether it can present each disk (before anything moves);
/// returns its notes for GET_MESSAGES. A refusal is `VIR_ERR_CONFIG_UNSUPPORTED`.
pub(super) async fn disk_notes(node: &Node, disks: &[DiskSpec]) -> VirResult<Vec<String>> {
    let mut notes = Vec::new();
    for d in disks {
        match node.disks.accepts(d).await {
            Ok(Some(n)) => notes.push(n),
            Ok(None) => {}
            Err(e) if e.kind == ErrorKind::Unsupported => {
                return Err(VirError::config_unsupported(&e.msg))
            }
            Err(e) => {
                return Err(super::backend_error(
                    &format!("cannot check disk {} on {}", d.target, node.spec.name),
                    &e,
                ))
            }
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
pub(super) fn disk_plan(
    uuid: &Uuid,
    def: &DomainDef,
    secrets: Option<&Secrets>,
) -> VirResult<Vec<DiskSpec>> {
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
pub(super) fn nic_plan(uuid: &Uuid, def: &DomainDef) -> Vec<NicSpec> {
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
    super::console::tcp_serials(def)?;
    def.disks().iter().try_for_each(|d| {
        super::volumes::disk_volume(d)?;
        disk_qos(d).map(drop)
    })
}

/// A disk's I/O limits (see `volumes::disk_qos`).
pub(super) fn disk_qos(d: &DiskDef) -> VirResult<Option<crate::backend::Qos>> {
    match &d.iotune {
        Some(t) => super::volumes::disk_qos(d.target_dev.as_deref().unwrap_or("?"), t),
        None => Ok(None),
    }
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
pub(super) fn boot_request(def: &DomainDef, node: &Node) -> BootRequest {
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
