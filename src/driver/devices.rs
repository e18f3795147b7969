//! Devices of a domain: attach, detach and update (live through the backends, config through
//! the persistent definition), block resize, and block/interface statistics.
//!
//! A live change is journaled like a start (DESIGN §3): a hot-plug records its step before the
//! backend call and only then adds the device to the live definition; a hot-unplug removes the
//! device from the live definition first and drops the step after the backend call. A crash in
//! between leaves a step the live definition does not own, which recovery undoes.

use std::sync::Arc;

use super::lifecycle::{disk_handle, disk_notes, disk_spec, nic_handle, nic_spec, set_device};
use super::store::Step;
use super::stored::{LiveXml, StoredDef};
use super::{DomainObj, Driver};
use crate::backend::{BlockInfo, BlockStats, IfStats, Node};
use crate::domain::devices::{self, parse_mac};
use crate::domain::hotplug::{check_config_change, identity, is_hotpluggable, parse_device};
use crate::domain::{DomainDef, Element};
use crate::error::{VirError, VirResult};
use crate::events::EventKind;

const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
const DEVICE_MODIFY_FORCE: u32 = 4;
const BLOCK_RESIZE_BYTES: u32 = 1;

fn not_live(kind: &str, what: &str) -> VirError {
    VirError::config_unsupported(&format!(
        "live {what} of device '{kind}' is not supported: a bare-metal server can only gain or lose disks and interfaces while it runs"
    ))
}

/// Finds a disk by target or source, like `virDomainDiskByName`.
fn disk_by_name(def: &DomainDef, path: &str) -> Option<crate::domain::DiskDef> {
    def.disks().into_iter().find(|d| {
        d.target_dev.as_deref() == Some(path)
            || [&d.source.file, &d.source.dev, &d.source.name]
                .iter()
                .any(|s| s.as_deref() == Some(path))
    })
}

impl Driver {
    fn live_node(&self, obj: &DomainObj) -> VirResult<Node> {
        let n = obj.with(|s| s.node.clone());
        n.and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("active domain has no node"))
    }

    /// The live definition as a tree.
    fn live_tree(obj: &DomainObj) -> VirResult<DomainDef> {
        obj.with(|s| s.def.clone()).tree()
    }

    /// The persistent definition as a tree.
    fn config_tree(obj: &DomainObj) -> VirResult<DomainDef> {
        obj.with(|s| s.persistent_def().clone()).tree()
    }

    /// Installs a new live definition (formatted once) and writes the status.
    async fn commit_live(&self, obj: &DomainObj, tree: &DomainDef) -> VirResult<()> {
        let def = StoredDef::checked(tree)?;
        let info = obj
            .with(|s| s.live_info())
            .ok_or_else(|| VirError::internal("active domain has no node"))?;
        let x = Arc::new(LiveXml::format(tree, &info));
        let old = obj.with(|s| {
            let old = (s.def.clone(), s.live_xml.clone());
            s.set_live_def(def, x);
            old
        });
        if let Err(e) = self.persist_active(obj).await {
            // Not recorded: not done.
            obj.with(|s| (s.def, s.live_xml) = old);
            return Err(e);
        }
        Ok(())
    }

    /// The persistent definition with `edit` applied, when `config` asks for it (built on a
    /// copy: nothing changes until [`Driver::commit_config`]).
    fn config_edit(
        obj: &DomainObj,
        config: bool,
        edit: impl FnOnce(&mut DomainDef) -> VirResult<()>,
    ) -> VirResult<Option<Arc<StoredDef>>> {
        if !config {
            return Ok(None);
        }
        let mut t = Self::config_tree(obj)?;
        edit(&mut t)?;
        Ok(Some(StoredDef::checked(&t)?))
    }

    // ------------------------------------------------------------------ attach

    /// `virDomainAttachDevice(Flags)`.
    pub async fn attach_device(
        &self,
        obj: &Arc<DomainObj>,
        xml: &str,
        flags: u32,
    ) -> VirResult<()> {
        VirError::check_flags(
            flags,
            AFFECT_LIVE | AFFECT_CONFIG,
            "virDomainAttachDeviceFlags",
        )?;
        let _job = obj
            .begin_job("virDomainAttachDevice", self.job_wait())
            .await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        let dev = parse_device(xml, false)?;
        match dev.name.as_str() {
            "interface" => devices::check_interface(&devices::interface_of(&dev))?,
            "disk" => super::volumes::disk_volume(&devices::disk_view(0, &dev, None)).map(drop)?,
            _ => {}
        }
        // Prepare the config change first: it fails without side effects.
        let new_config = Self::config_edit(obj, config, |t| {
            check_config_change(&dev, "attach")?;
            t.insert_device(dev.clone(), false).map(drop)
        })?;
        if live {
            if !is_hotpluggable(&dev) {
                return Err(not_live(&dev.name, "attach"));
            }
            self.hot_attach(obj, dev).await?;
        }
        if let Some(c) = new_config {
            self.commit_config(obj, c).await?;
        }
        Ok(())
    }

    async fn hot_attach(&self, obj: &Arc<DomainObj>, dev: Element) -> VirResult<()> {
        let node = self.live_node(obj)?;
        let mut tree = Self::live_tree(obj)?;
        let index = tree.insert_device(dev, true)?;
        // Refused before anything is mapped, not when the live definition is stored.
        StoredDef::checked(&tree)?;
        let alias = tree
            .device(index)
            .and_then(devices::alias_of)
            .unwrap_or_default()
            .to_string();
        let r = obj.dom_ref();
        let n = &node.spec.name;
        let step = match tree.device(index).map(|d| d.name.clone()).as_deref() {
            Some("disk") => {
                let view = tree
                    .disks()
                    .into_iter()
                    .find(|d| d.index == index)
                    .ok_or_else(|| VirError::internal("attached disk vanished"))?;
                match disk_spec(&obj.uuid, &view, Some(&self.secrets))? {
                    None => None,
                    Some(mut spec) => {
                        // Next free position on the host's controller.
                        spec.unit = Some(
                            obj.with(|s| {
                                s.journal
                                    .iter()
                                    .filter_map(|st| match st {
                                        Step::Disk { unit, .. } => *unit,
                                        _ => None,
                                    })
                                    .max()
                            })
                            .unwrap_or(0)
                                + 1,
                        );
                        let notes = disk_notes(&node, std::slice::from_ref(&spec))?;
                        let step = Step::Disk {
                            handle: spec.handle.clone(),
                            target: spec.target.clone(),
                            device: None,
                            unit: spec.unit,
                        };
                        obj.with(|s| notes.into_iter().for_each(|n| s.note(n)));
                        self.journal_add(obj, step).await?;
                        crate::crash::point("attach:journaled");
                        match node.disks.attach(&spec).await {
                            Ok(dev) => Some((spec.handle, dev)),
                            Err(e) => {
                                let _ = node.disks.detach(&spec.handle).await;
                                self.journal_drop(obj, &spec.handle).await;
                                return Err(super::backend_error(
                                    &format!(
                                        "cannot map disk {} ({}) on {n}",
                                        spec.target, spec.source
                                    ),
                                    &e,
                                ));
                            }
                        }
                    }
                }
            }
            _ => {
                let view = tree
                    .interfaces()
                    .into_iter()
                    .find(|i| i.index == index)
                    .ok_or_else(|| VirError::internal("attached interface vanished"))?;
                let spec = nic_spec(&obj.uuid, &view)
                    .ok_or_else(|| VirError::internal("interface has no MAC address"))?;
                let step = Step::Nic {
                    handle: spec.handle.clone(),
                    mac: spec.mac.clone(),
                    representor: None,
                };
                self.journal_add(obj, step).await?;
                crate::crash::point("attach:journaled");
                match node.nics.plug(&spec).await {
                    Ok(rep) => {
                        if view.target_dev.is_none() {
                            tree.set_interface_target(index, &rep);
                        }
                        Some((spec.handle, rep))
                    }
                    Err(e) => {
                        let _ = node.nics.unplug(&spec.handle).await;
                        self.journal_drop(obj, &spec.handle).await;
                        return Err(super::backend_error(
                            &format!("cannot plug NIC {} on {n}", spec.mac),
                            &e,
                        ));
                    }
                }
            }
        };
        if let Some((handle, dev)) = step {
            obj.with(|s| set_device(&mut s.journal, &handle, dev));
        }
        crate::crash::point("attach:mapped");
        self.commit_live(obj, &tree).await?;
        crate::crash::point("attach:committed");
        tracing::info!(domain = %r.name, alias = %alias, node = %n, "device attached");
        self.emit(&obj.dom_ref(), EventKind::DeviceAdded(alias));
        Ok(())
    }

    /// Records a hardware step before it runs; nothing runs unless the record is durable.
    async fn journal_add(&self, obj: &DomainObj, step: Step) -> VirResult<()> {
        let handle = step.handle().map(str::to_string);
        obj.with(|s| s.journal.push(step));
        if let Err(e) = self.persist_active(obj).await {
            obj.with(|s| s.journal.retain(|st| st.handle() != handle.as_deref()));
            return Err(e);
        }
        Ok(())
    }

    /// Forgets a step that was undone (best effort: a leftover record is undone again at
    /// the next start of the daemon, harmlessly).
    async fn journal_drop(&self, obj: &DomainObj, handle: &str) {
        obj.with(|s| s.journal.retain(|st| st.handle() != Some(handle)));
        let _ = self.persist_active(obj).await;
    }

    // ------------------------------------------------------------------ detach

    /// `virDomainDetachDevice(Flags)`.
    pub async fn detach_device(
        &self,
        obj: &Arc<DomainObj>,
        xml: &str,
        flags: u32,
    ) -> VirResult<()> {
        VirError::check_flags(
            flags,
            AFFECT_LIVE | AFFECT_CONFIG,
            "virDomainDetachDeviceFlags",
        )?;
        let _job = obj
            .begin_job("virDomainDetachDevice", self.job_wait())
            .await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        let dev = parse_device(xml, true)?;
        let new_config = Self::config_edit(obj, config, |t| {
            check_config_change(&dev, "detach")?;
            let i = t.find_device(&dev, false)?;
            t.remove_device(i);
            Ok(())
        })?;
        if live {
            let tree = Self::live_tree(obj)?;
            let i = tree.find_device(&dev, true)?;
            self.hot_detach(obj, tree, i).await?;
        }
        if let Some(c) = new_config {
            self.commit_config(obj, c).await?;
        }
        Ok(())
    }

    /// `virDomainDetachDeviceAlias`.
    pub async fn detach_alias(
        &self,
        obj: &Arc<DomainObj>,
        alias: &str,
        flags: u32,
    ) -> VirResult<()> {
        VirError::check_flags(
            flags,
            AFFECT_LIVE | AFFECT_CONFIG,
            "virDomainDetachDeviceAlias",
        )?;
        let _job = obj
            .begin_job("virDomainDetachDeviceAlias", self.job_wait())
            .await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        let missing = || VirError::device_missing(&format!("no device found with alias {alias}"));
        let new_config = Self::config_edit(obj, config, |t| {
            let i = t.find_alias(alias).ok_or_else(missing)?;
            t.remove_device(i);
            Ok(())
        })?;
        if live {
            let tree = Self::live_tree(obj)?;
            let i = tree.find_alias(alias).ok_or_else(missing)?;
            self.hot_detach(obj, tree, i).await?;
        }
        if let Some(c) = new_config {
            self.commit_config(obj, c).await?;
        }
        Ok(())
    }

    async fn hot_detach(
        &self,
        obj: &Arc<DomainObj>,
        mut tree: DomainDef,
        index: usize,
    ) -> VirResult<()> {
        let node = self.live_node(obj)?;
        let el = tree
            .device(index)
            .cloned()
            .ok_or_else(|| VirError::internal("device index out of range"))?;
        if !is_hotpluggable(&el) {
            return Err(not_live(&el.name, "detach"));
        }
        let alias = devices::alias_of(&el).unwrap_or_default().to_string();
        let target = el.child("target").and_then(|t| t.attr("dev")).unwrap_or("");
        let mac = el
            .child("mac")
            .and_then(|m| m.attr("address"))
            .unwrap_or("");
        let is_disk = el.name == "disk";
        let handle = if is_disk {
            disk_handle(&obj.uuid, target)
        } else {
            nic_handle(&obj.uuid, mac)
        };
        let mapped = obj.with(|s| s.journal.iter().any(|st| st.handle() == Some(&handle)));
        tree.remove_device(index);
        let (old_def, old_xml) = obj.with(|s| (s.def.clone(), s.live_xml.clone()));
        self.commit_live(obj, &tree).await?;
        crate::crash::point("detach:committed");
        let r = obj.dom_ref();
        let result = if !mapped {
            Ok(())
        } else if is_disk {
            node.disks.detach(&handle).await
        } else {
            node.nics.unplug(&handle).await
        };
        match result {
            Ok(()) => {
                crate::crash::point("detach:unmapped");
                if mapped {
                    self.journal_drop(obj, &handle).await;
                }
                tracing::info!(domain = %r.name, alias = %alias, node = %node.spec.name, "device detached");
                self.emit(&r, EventKind::DeviceRemoved(alias));
                Ok(())
            }
            Err(e) => {
                // Still there: put it back in the live definition.
                obj.with(|s| {
                    s.def = old_def;
                    s.live_xml = old_xml;
                });
                let _ = self.persist_active(obj).await;
                tracing::error!(domain = %r.name, alias = %alias, "device removal failed: {e}");
                self.emit(&r, EventKind::DeviceRemovalFailed(alias.clone()));
                let what = if is_disk {
                    format!("cannot unmap disk {target}")
                } else {
                    format!("cannot unplug NIC {mac}")
                };
                Err(VirError::operation_failed(&format!(
                    "{what} ({alias}) on {}: {e}",
                    node.spec.name
                )))
            }
        }
    }

    // ------------------------------------------------------------------ update

    /// `virDomainUpdateDeviceFlags`: the persistent definition takes any change; a running
    /// server's device can only be "updated" to what it already is (changing a mapped volume or
    /// a plugged function in place is not something the hardware does: detach and attach).
    pub async fn update_device(
        &self,
        obj: &Arc<DomainObj>,
        xml: &str,
        flags: u32,
    ) -> VirResult<()> {
        VirError::check_flags(
            flags,
            AFFECT_LIVE | AFFECT_CONFIG | DEVICE_MODIFY_FORCE,
            "virDomainUpdateDeviceFlags",
        )?;
        let _job = obj
            .begin_job("virDomainUpdateDeviceFlags", self.job_wait())
            .await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        let dev = parse_device(xml, false)?;
        let find = |t: &DomainDef, persistent: bool| -> VirResult<usize> {
            match dev.name.as_str() {
                "disk" => {
                    let target = dev
                        .child("target")
                        .and_then(|x| x.attr("dev"))
                        .unwrap_or("");
                    t.disks()
                        .iter()
                        .find(|d| d.target_dev.as_deref() == Some(target))
                        .map(|d| d.index)
                        .ok_or_else(|| {
                            VirError::invalid_arg(&format!("target {target} doesn't exist."))
                        })
                }
                "interface" => t.find_device(&dev, true),
                kind if persistent => Err(VirError::operation_unsupported(&format!(
                    "persistent update of device '{kind}' is not supported"
                ))),
                kind => Err(VirError::config_unsupported(&format!(
                    "live update of device '{kind}' is not supported"
                ))),
            }
        };
        let new_config = Self::config_edit(obj, config, |t| {
            let i = find(t, true)?;
            t.replace_device(i, dev.clone())
        })?;
        if live {
            let t = Self::live_tree(obj)?;
            let i = find(&t, false)?;
            let cur = t
                .device(i)
                .ok_or_else(|| VirError::internal("device index out of range"))?;
            if identity(cur, true) != identity(&dev, true) {
                return Err(VirError::operation_unsupported(&format!(
                    "cannot change the {} of a running bare-metal server in place: detach it and attach the new one",
                    dev.name
                )));
            }
        }
        if let Some(c) = new_config {
            self.commit_config(obj, c).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ block and interface

    /// The live disk called `path` (target or source) and its backend handle, if mapped.
    fn live_disk(
        &self,
        obj: &DomainObj,
        path: &str,
        not_found: impl FnOnce() -> VirError,
    ) -> VirResult<(crate::domain::DiskDef, Option<String>)> {
        let tree = Self::live_tree(obj)?;
        let d = disk_by_name(&tree, path).ok_or_else(not_found)?;
        let handle = d.target_dev.as_deref().map(|t| disk_handle(&obj.uuid, t));
        let mapped = handle
            .filter(|h| obj.with(|s| s.journal.iter().any(|st| st.handle() == Some(h.as_str()))));
        Ok((d, mapped))
    }

    fn require_active(obj: &DomainObj) -> VirResult<()> {
        if obj.with(|s| s.active()) {
            Ok(())
        } else {
            Err(VirError::operation_invalid("domain is not running"))
        }
    }

    /// `virDomainBlockResize`: grows the cloud volume; shrinking is refused.
    pub async fn block_resize(
        &self,
        obj: &Arc<DomainObj>,
        path: &str,
        size: u64,
        flags: u32,
    ) -> VirResult<()> {
        VirError::check_flags(flags, BLOCK_RESIZE_BYTES, "virDomainBlockResize")?;
        let bytes = if flags & BLOCK_RESIZE_BYTES != 0 {
            size
        } else {
            size.checked_mul(1024).ok_or_else(|| {
                VirError::overflow(&format!("size must be less than {}", u64::MAX / 1024))
            })?
        };
        let _job = obj
            .begin_job("virDomainBlockResize", self.job_wait())
            .await?;
        Self::require_active(obj)?;
        let (d, handle) = self.live_disk(obj, path, || {
            VirError::invalid_arg(&format!("disk '{path}' was not found in the domain config"))
        })?;
        let target = d.target_dev.clone().unwrap_or_default();
        let handle = match handle {
            Some(h) if !d.readonly => h,
            _ => {
                return Err(VirError::operation_unsupported(&format!(
                    "can't resize empty or readonly disk '{path}'"
                )))
            }
        };
        let node = self.live_node(obj)?;
        let info = node.disks.info(&handle).await.map_err(|e| {
            super::backend_error(&format!("cannot read the size of disk {target}"), &e)
        })?;
        if bytes < info.capacity {
            return Err(VirError::invalid_arg(&format!(
                "cannot shrink disk {target} from {} to {bytes} bytes: cloud volumes can only grow",
                info.capacity
            )));
        }
        crate::crash::point("resize:before");
        let now = node
            .disks
            .resize(&handle, bytes)
            .await
            .map_err(|e| super::backend_error(&format!("cannot resize disk {target}"), &e))?;
        crate::crash::point("resize:after");
        tracing::info!(domain = %obj.dom_ref().name, disk = %target, bytes = now, "disk resized");
        Ok(())
    }

    /// `virDomainGetBlockInfo`. An inactive domain has nothing mapped: all zero.
    pub async fn block_info(
        &self,
        obj: &Arc<DomainObj>,
        path: &str,
        flags: u32,
    ) -> VirResult<BlockInfo> {
        VirError::check_flags(flags, 0, "virDomainGetBlockInfo")?;
        let not_found =
            || VirError::invalid_arg(&format!("invalid path {path} not assigned to domain"));
        if !obj.with(|s| s.active()) {
            let t = obj.with(|s| s.def.clone()).tree()?;
            disk_by_name(&t, path).ok_or_else(not_found)?;
            return Ok(BlockInfo::default());
        }
        let (d, handle) = self.live_disk(obj, path, not_found)?;
        let Some(handle) = handle else {
            return Ok(BlockInfo::default());
        };
        let node = self.live_node(obj)?;
        node.disks.info(&handle).await.map_err(|e| {
            VirError::operation_failed(&format!(
                "cannot read the size of disk {}: {e}",
                d.target_dev.unwrap_or_default()
            ))
        })
    }

    /// `virDomainBlockStats(Flags)`; `""` sums every disk.
    pub async fn block_stats(&self, obj: &Arc<DomainObj>, path: &str) -> VirResult<BlockStats> {
        Self::require_active(obj)?;
        let node = self.live_node(obj)?;
        let handles: Vec<String> = if path.is_empty() {
            obj.with(|s| {
                s.journal
                    .iter()
                    .filter_map(|st| match st {
                        Step::Disk { handle, .. } => Some(handle.clone()),
                        _ => None,
                    })
                    .collect()
            })
        } else {
            let (_, h) = self.live_disk(obj, path, || {
                VirError::invalid_arg(&format!("invalid path: {path}"))
            })?;
            h.into_iter().collect()
        };
        let mut sum = BlockStats::default();
        for h in handles {
            let s = node
                .disks
                .stats(&h)
                .await
                .map_err(|e| super::backend_error("cannot read disk statistics", &e))?;
            sum.rd_req += s.rd_req;
            sum.rd_bytes += s.rd_bytes;
            sum.wr_req += s.wr_req;
            sum.wr_bytes += s.wr_bytes;
            sum.flush_req += s.flush_req;
            sum.rd_total_ns += s.rd_total_ns;
            sum.wr_total_ns += s.wr_total_ns;
            sum.flush_total_ns += s.flush_total_ns;
        }
        Ok(sum)
    }

    /// `virDomainInterfaceStats`: `device` is a target dev or a MAC address.
    pub async fn interface_stats(&self, obj: &Arc<DomainObj>, device: &str) -> VirResult<IfStats> {
        Self::require_active(obj)?;
        let tree = Self::live_tree(obj)?;
        let mac = parse_mac(device).map(|m| devices::format_mac(&m));
        let nic = tree
            .interfaces()
            .into_iter()
            .find(|i| match &mac {
                Some(m) => i.mac.as_deref() == Some(m.as_str()),
                None => i.target_dev.as_deref() == Some(device),
            })
            .ok_or_else(|| {
                VirError::invalid_arg(&format!("'{device}' is not a known interface"))
            })?;
        let handle = nic_handle(&obj.uuid, nic.mac.as_deref().unwrap_or(""));
        let node = self.live_node(obj)?;
        node.nics
            .stats(&handle)
            .await
            .map_err(|e| super::backend_error("cannot read interface statistics", &e))
    }

    // ------------------------------------------------------------------ reconcile

    /// Makes a node's plugged NICs match its live domain (start-up, after recovery): ports
    /// the backend holds for this node that no live domain owns are removed, and NICs a live
    /// domain owns that the backend lacks (lost while the daemon was down) are plugged again,
    /// on the same function when it is free. Each domain is examined under its job, so
    /// operations running meanwhile are never undone. Returns (removed, re-plugged).
    pub(super) async fn reconcile_nics(&self, node: &Node) -> Result<(usize, usize), String> {
        let n = node.spec.name.as_str();
        // A quarantined domain owns everything named after it, wherever it is.
        let owns = |obj: &DomainObj, h: &str| {
            obj.with(|s| {
                s.quarantine.is_some()
                    || (s.active()
                        && s.node.as_deref() == Some(n)
                        && s.journal.iter().any(|st| st.handle() == Some(h)))
            })
        };
        let listed = node.nics.list().await.map_err(|e| e.to_string())?;
        let mut removed = 0;
        for h in listed {
            let owner = handle_domain(&h).and_then(|u| self.lookup_uuid(&u).ok());
            let _job = match &owner {
                Some(obj) => Some(obj.begin_internal_job("reconcile").await),
                None => None,
            };
            if owner.as_ref().is_some_and(|o| owns(o, &h)) {
                continue;
            }
            match node.nics.unplug(&h).await {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(node = n, handle = %h, "reconcile: removed a NIC port no live domain owns");
                }
                Err(e) => {
                    tracing::error!(node = n, handle = %h, "reconcile: cannot remove an orphaned NIC port: {e}")
                }
            }
        }
        let mut replugged = 0;
        for obj in self.all() {
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
            let Ok(mut tree) = Self::live_tree(&obj) else {
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
                let _ = self.commit_live(&obj, &tree).await;
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
    pub(super) async fn reconcile_disks(&self, node: &Node) -> Result<(usize, usize), String> {
        let n = node.spec.name.as_str();
        let listed = node.disks.list().await.map_err(|e| e.to_string())?;
        let mut removed = 0;
        for h in &listed {
            let owner = handle_domain(h).and_then(|u| self.lookup_uuid(&u).ok());
            let _job = match &owner {
                Some(obj) => Some(obj.begin_internal_job("reconcile").await),
                None => None,
            };
            // A quarantined domain owns everything named after it, wherever it is.
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
            match node.disks.detach(h).await {
                Ok(()) => {
                    removed += 1;
                    tracing::warn!(node = n, handle = %h, "reconcile: unmapped a disk no live domain owns");
                }
                Err(e) => {
                    tracing::error!(node = n, handle = %h, "reconcile: cannot unmap an orphaned disk: {e}")
                }
            }
        }
        let mut remapped = 0;
        for obj in self.all() {
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
            let Ok(tree) = Self::live_tree(&obj) else {
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

/// The domain a backend handle (`mv-<uuid>-…`) belongs to.
fn handle_domain(handle: &str) -> Option<uuid::Uuid> {
    let rest = handle.strip_prefix("mv-")?;
    uuid::Uuid::try_parse(rest.get(..32)?).ok()
}
