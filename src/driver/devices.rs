//! Devices of a domain: attach, detach and update (live through the backends, config through
//! the persistent definition), block resize, and block/interface statistics.
//!
//! A live change is journaled like a start (DESIGN §3): a hot-plug records its step before the
//! backend call and only then adds the device to the live definition; a hot-unplug removes the
//! device from the live definition first and drops the step after the backend call. A crash in
//! between leaves a step the live definition does not own, which recovery undoes.

use std::sync::Arc;

use super::plan::{disk_handle, disk_notes, disk_spec, nic_handle, nic_spec};
use super::steps::{self, set_device, Plug};
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
pub(super) fn disk_by_name(def: &DomainDef, path: &str) -> Option<crate::domain::DiskDef> {
    def.disks().into_iter().find(|d| {
        d.target_dev.as_deref() == Some(path)
            || [&d.source.file, &d.source.dev, &d.source.name]
                .iter()
                .any(|s| s.as_deref() == Some(path))
    })
}

impl Driver {
    pub(super) fn live_node(&self, obj: &DomainObj) -> VirResult<Node> {
        let n = obj.with(|s| s.node.clone());
        n.and_then(|n| self.node(&n).cloned())
            .ok_or_else(|| VirError::internal("active domain has no node"))
    }

    /// The live definition as a tree.
    pub(super) fn live_tree(obj: &DomainObj) -> VirResult<DomainDef> {
        obj.with(|s| s.def.clone()).tree()
    }

    /// The persistent definition as a tree.
    pub(super) fn config_tree(obj: &DomainObj) -> VirResult<DomainDef> {
        obj.with(|s| s.persistent_def().clone()).tree()
    }

    /// Installs a new live definition (formatted once) and writes the status.
    pub(super) async fn commit_live(&self, obj: &DomainObj, tree: &DomainDef) -> VirResult<()> {
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

    /// What every device change starts with (attach, detach, update): its flags checked
    /// (`VIR_DOMAIN_AFFECT_LIVE`, `_CONFIG` and the call's own `extra`), the domain's job,
    /// and which definitions the change affects (live, config).
    pub(super) async fn begin_device_change<'a>(
        &self,
        obj: &'a DomainObj,
        flags: u32,
        extra: u32,
        api: &'static str,
    ) -> VirResult<(super::Job<'a>, bool, bool)> {
        VirError::check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | extra, api)?;
        let job = obj.begin_job(api, self.job_wait()).await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        Ok((job, live, config))
    }

    // ------------------------------------------------------------------ attach

    /// `virDomainAttachDevice(Flags)`.
    pub async fn attach_device(
        &self,
        obj: &Arc<DomainObj>,
        xml: &str,
        flags: u32,
    ) -> VirResult<()> {
        let (_job, live, config) = self
            .begin_device_change(obj, flags, 0, "virDomainAttachDeviceFlags")
            .await?;
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
        // What the backends must do: a disk with a source, or a NIC (an empty CD-ROM needs
        // nothing).
        let (mut disk, mut nic, mut nic_target) = (None, None, None);
        if tree.device(index).is_some_and(|d| d.name == "disk") {
            let view = tree
                .disks()
                .into_iter()
                .find(|d| d.index == index)
                .ok_or_else(|| VirError::internal("attached disk vanished"))?;
            if let Some(mut spec) = disk_spec(&obj.uuid, &view, Some(&self.secrets))? {
                // Next free position on the host's controller.
                let last = obj.with(|s| {
                    s.journal
                        .iter()
                        .filter_map(|st| match st {
                            Step::Disk { unit, .. } => *unit,
                            _ => None,
                        })
                        .max()
                });
                spec.unit = Some(last.unwrap_or(0) + 1);
                let notes = disk_notes(&node, std::slice::from_ref(&spec)).await?;
                obj.with(|s| notes.into_iter().for_each(|n| s.note(n)));
                disk = Some(spec);
            }
        } else {
            let view = tree
                .interfaces()
                .into_iter()
                .find(|i| i.index == index)
                .ok_or_else(|| VirError::internal("attached interface vanished"))?;
            nic = Some(
                nic_spec(&obj.uuid, &view)
                    .ok_or_else(|| VirError::internal("interface has no MAC address"))?,
            );
            nic_target = view.target_dev;
        }
        let plug = match (&disk, &nic) {
            (Some(d), _) => Some(Plug::Disk(d)),
            (None, Some(x)) => Some(Plug::Nic(x)),
            (None, None) => None,
        };
        if let Some(plug) = plug {
            let step = plug.record();
            self.journal_add(obj, step.clone()).await?;
            crate::crash::point("attach:journaled");
            match plug.run(&node).await {
                Ok(dev) => {
                    if matches!(plug, Plug::Nic(_)) && nic_target.is_none() {
                        tree.set_interface_target(index, &dev);
                    }
                    obj.with(|s| set_device(&mut s.journal, plug.handle(), dev));
                }
                Err(e) => {
                    // Whatever the backend did half-way goes too.
                    let _ = steps::undo(&node, &step).await;
                    self.journal_drop(obj, plug.handle()).await;
                    return Err(e);
                }
            }
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
        let (_job, live, config) = self
            .begin_device_change(obj, flags, 0, "virDomainDetachDeviceFlags")
            .await?;
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
        let (_job, live, config) = self
            .begin_device_change(obj, flags, 0, "virDomainDetachDeviceAlias")
            .await?;
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
        let mapped = obj.with(|s| {
            s.journal
                .iter()
                .find(|st| st.handle() == Some(&handle))
                .cloned()
        });
        tree.remove_device(index);
        let (old_def, old_xml) = obj.with(|s| (s.def.clone(), s.live_xml.clone()));
        self.commit_live(obj, &tree).await?;
        crate::crash::point("detach:committed");
        let r = obj.dom_ref();
        let result = match &mapped {
            None => Ok(()),
            Some(step) => steps::undo(&node, step).await,
        };
        match result {
            Ok(()) => {
                crate::crash::point("detach:unmapped");
                if mapped.is_some() {
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
                self.emit(&r, EventKind::DeviceRemovalFailed(alias));
                Err(e.to_vir())
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
        let (_job, live, config) = self
            .begin_device_change(
                obj,
                flags,
                DEVICE_MODIFY_FORCE,
                "virDomainUpdateDeviceFlags",
            )
            .await?;
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
        self.require_running(obj)?;
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
        self.require_running(obj)?;
        let node = self.live_node(obj)?;
        let handles: Vec<String> = if path.is_empty() {
            obj.with(|s| s.disk_handles())
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
        self.require_running(obj)?;
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
}
