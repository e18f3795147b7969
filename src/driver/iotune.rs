//! Block I/O limits (`virDomainSetBlockIoTune`, `virDomainGetBlockIoTune`): a disk's
//! `<iotune>` in the definition(s) the call affects and, live, the disk backend's QoS
//! (SPDK `bdev_set_qos_limit`). Only what the backend applies exactly is accepted
//! (`volumes::disk_qos`).

use std::sync::Arc;

use super::plan::disk_handle;
use super::stats::StatValue;
use super::{DomainObj, Driver};
use crate::domain::devices::{IoTune, IOTUNE_FIELDS};
use crate::domain::{DomainDef, Element};
use crate::error::{VirError, VirResult};

/// `VIR_TYPED_PARAM_STRING_OKAY`: the caller takes string parameters (`group_name`).
const STRING_OKAY: u32 = 4;

/// Where libvirt puts `<iotune>` in a `<disk>`: before the first of these.
const AFTER_IOTUNE: &[&str] = &[
    "boot",
    "readonly",
    "shareable",
    "transient",
    "serial",
    "wwn",
    "vendor",
    "product",
    "encryption",
    "alias",
    "address",
];

/// One parameter of `virDomainSetBlockIoTune`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TuneParam {
    /// A numeric field (`total_bytes_sec`, …).
    Field(String, u64),
    /// `group_name`.
    Group(String),
}

/// `disk` of `tree` (by target or source) and its index.
fn find_disk(tree: &DomainDef, disk: &str) -> VirResult<(usize, String, IoTune)> {
    let d = super::devices::disk_by_name(tree, disk).ok_or_else(|| {
        VirError::invalid_arg(&format!("disk '{disk}' was not found in the domain config"))
    })?;
    Ok((
        d.index,
        d.target_dev.unwrap_or_default(),
        d.iotune.unwrap_or_default(),
    ))
}

/// The limits after `params`, as libvirt's QEMU driver combines them: a total given clears
/// its read and write limits, a read or write limit given clears the total (unless the
/// call gives those too; the consistency check catches a call that sets both).
fn combine(cur: &IoTune, params: &[TuneParam]) -> VirResult<IoTune> {
    let mut t = cur.clone();
    t.invalid = None;
    let given = |name: &str| {
        params
            .iter()
            .any(|p| matches!(p, TuneParam::Field(f, _) if f == name))
    };
    for p in params {
        match p {
            TuneParam::Group(g) => t.group_name = (!g.is_empty()).then(|| g.clone()),
            TuneParam::Field(f, v) => {
                if !t.set(f, *v) {
                    return Err(VirError::argument_unsupported(&format!(
                        "parameter '{f}' not supported"
                    )));
                }
                let (total, read, write) = match f.split_once('_') {
                    Some(("total", rest)) => (
                        None,
                        Some(format!("read_{rest}")),
                        Some(format!("write_{rest}")),
                    ),
                    Some(("read" | "write", rest)) => (Some(format!("total_{rest}")), None, None),
                    _ => (None, None, None),
                };
                for other in [total, read, write].into_iter().flatten() {
                    if !given(&other) {
                        t.set(&other, 0);
                    }
                }
            }
        }
    }
    Ok(t)
}

/// `tree` with disk `index`'s `<iotune>` replaced by `t` (removed when nothing is limited).
fn with_iotune(tree: &mut DomainDef, index: usize, t: &IoTune) -> VirResult<()> {
    let mut el: Element = tree
        .device(index)
        .cloned()
        .ok_or_else(|| VirError::internal("disk index out of range"))?;
    el.remove_children_named("iotune");
    if let Some(io) = t.to_element() {
        el.insert_before_first(io, AFTER_IOTUNE);
    }
    tree.replace_device(index, el)
}

impl Driver {
    /// `virDomainSetBlockIoTune`.
    pub async fn set_block_io_tune(
        &self,
        obj: &Arc<DomainObj>,
        disk: &str,
        params: &[TuneParam],
        flags: u32,
    ) -> VirResult<()> {
        let (_job, live, config) = self
            .begin_device_change(obj, flags, 0, "virDomainSetBlockIoTune")
            .await?;
        let mut new_config = None;
        if config {
            let mut t = Self::config_tree(obj)?;
            let (i, target, cur) = find_disk(&t, disk)?;
            let io = combine(&cur, params)?;
            super::volumes::disk_qos(&target, &io)?;
            with_iotune(&mut t, i, &io)?;
            new_config = Some(t);
        }
        if live {
            let mut t = Self::live_tree(obj)?;
            let (i, target, cur) = find_disk(&t, disk)?;
            let io = combine(&cur, params)?;
            let qos = super::volumes::disk_qos(&target, &io)?.unwrap_or_default();
            with_iotune(&mut t, i, &io)?;
            let handle = disk_handle(&obj.uuid, &target);
            let mapped = obj.with(|s| s.journal.iter().any(|st| st.handle() == Some(&handle)));
            if mapped {
                let node = self.live_node(obj)?;
                node.disks.set_qos(&handle, &qos).await.map_err(|e| {
                    super::backend_error(&format!("cannot set the I/O limits of disk {target}"), &e)
                })?;
            }
            self.commit_live(obj, &t).await?;
        }
        if let Some(t) = new_config {
            let def = crate::driver::stored::StoredDef::checked(&t)?;
            self.commit_config(obj, def).await?;
        }
        Ok(())
    }

    /// `virDomainGetBlockIoTune`: with `nparams` 0 the number of parameters; else the
    /// first `nparams` of them for `disk` in the definition `flags` names (the running one
    /// by default).
    pub fn get_block_io_tune(
        &self,
        obj: &Arc<DomainObj>,
        disk: Option<&str>,
        nparams: i32,
        flags: u32,
    ) -> VirResult<(Vec<(String, StatValue)>, i32)> {
        VirError::check_flags(flags, 1 | 2 | STRING_OKAY, "virDomainGetBlockIoTune")?;
        let count = IOTUNE_FIELDS.len() + usize::from(flags & STRING_OKAY != 0);
        if nparams == 0 {
            return Ok((Vec::new(), count as i32));
        }
        let disk = disk
            .ok_or_else(|| VirError::api_arg("disk in virDomainGetBlockIoTune must not be NULL"))?;
        let (live, _) = Self::modification_impact(obj, flags & 3)?;
        let tree = if live {
            Self::live_tree(obj)?
        } else {
            Self::config_tree(obj)?
        };
        let (_, _, io) = find_disk(&tree, disk)?;
        let mut out: Vec<(String, StatValue)> = IOTUNE_FIELDS
            .iter()
            .map(|f| (f.to_string(), StatValue::ULLong(io.get(f))))
            .collect();
        if flags & STRING_OKAY != 0 {
            out.insert(
                13,
                (
                    "group_name".into(),
                    StatValue::Str(io.group_name.clone().unwrap_or_default()),
                ),
            );
        }
        out.truncate(nparams.max(0) as usize);
        Ok((out, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(f: &str, v: u64) -> TuneParam {
        TuneParam::Field(f.into(), v)
    }

    #[test]
    fn a_total_clears_read_and_write_and_back() {
        let mut cur = IoTune::default();
        cur.set("read_bytes_sec", 1 << 20);
        cur.set("write_bytes_sec", 2 << 20);
        let t = combine(&cur, &[field("total_bytes_sec", 4 << 20)]).unwrap();
        assert_eq!(
            (
                t.get("total_bytes_sec"),
                t.get("read_bytes_sec"),
                t.get("write_bytes_sec")
            ),
            (4 << 20, 0, 0)
        );
        let t = combine(&t, &[field("read_bytes_sec", 1 << 20)]).unwrap();
        assert_eq!(
            (t.get("total_bytes_sec"), t.get("read_bytes_sec")),
            (0, 1 << 20)
        );
        // Both in one call: kept, and the consistency check refuses them.
        let t = combine(
            &IoTune::default(),
            &[field("total_iops_sec", 1000), field("read_iops_sec", 1000)],
        )
        .unwrap();
        assert!(t.conflict().is_some());
        let e = combine(&cur, &[field("total_foo", 1)]).unwrap_err();
        assert_eq!(e.code, crate::error::code::ARGUMENT_UNSUPPORTED);
    }
}
