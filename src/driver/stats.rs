//! Domain statistics (`virConnectGetAllDomainStats`, `virDomainListGetStats`): the groups a
//! bare-metal server has, in libvirt's field names, for `virsh domstats` and the Prometheus
//! libvirt exporters.
//!
//! | group | fields | source |
//! |---|---|---|
//! | state | `state.state`, `state.reason` | the lifecycle state |
//! | balloon | `balloon.current`, `balloon.maximum` (KiB) | the definition: a server's memory does not balloon |
//! | vcpu | `vcpu.current`, `vcpu.maximum` | the definition |
//! | interface | `net.count`, `net.<n>.name`, `.rx.bytes/pkts/errs/drop`, `.tx.…` | the NIC backend (OVS Interface statistics), running domains |
//! | block | `block.count`, `block.<n>.name`, `.path` (local sources), `.rd.reqs/bytes/times`, `.wr.…`, `.fl.reqs/times`, `.allocation/capacity/physical` | the disk backend (SPDK `bdev_get_iostat`), running domains |
//! | sensors (metalvirt's, bit 1 << 30) | `metalvirt.power.watts`, `metalvirt.inlet.celsius` (doubles), `metalvirt.sensors.age.ms` | the BMC (Redfish EnvironmentMetrics, or Power and Thermal; IPMI full-sensor SDR records), read by the power watcher with the power state: never a BMC call per statistics call |
//!
//! CPU time, per-vCPU times, perf counters and the rest describe a hypervisor's threads: a
//! bare-metal server has none to report.

use std::sync::Arc;

use super::plan::{disk_handle, nic_handle};
use super::{DomRef, DomainObj, Driver};
use crate::error::{VirError, VirResult};

/// `virDomainStatsTypes` metalvirt reports.
pub mod group {
    /// `VIR_DOMAIN_STATS_STATE`.
    pub const STATE: u32 = 1;
    /// `VIR_DOMAIN_STATS_BALLOON`.
    pub const BALLOON: u32 = 4;
    /// `VIR_DOMAIN_STATS_VCPU`.
    pub const VCPU: u32 = 8;
    /// `VIR_DOMAIN_STATS_INTERFACE`.
    pub const INTERFACE: u32 = 16;
    /// `VIR_DOMAIN_STATS_BLOCK`.
    pub const BLOCK: u32 = 32;
    /// metalvirt's own: the server's BMC sensors (`metalvirt.*`). A bit far above
    /// libvirt's groups; part of "every group" (0).
    pub const SENSORS: u32 = 1 << 30;
    /// Every group above.
    pub const SUPPORTED: u32 = STATE | BALLOON | VCPU | INTERFACE | BLOCK | SENSORS;
}

/// `VIR_CONNECT_GET_ALL_DOMAINS_STATS_*`.
pub mod flag {
    /// The domain-list filters (the same bits as `virConnectListAllDomains`' first eight).
    pub const FILTERS: u32 = 0xff;
    /// `NOWAIT`: every statistic here is at hand, so it changes nothing.
    pub const NOWAIT: u32 = 1 << 29;
    /// `BACKING`: no backing chains on bare metal; accepted, changes nothing.
    pub const BACKING: u32 = 1 << 30;
    /// `ENFORCE_STATS`: refuse groups that are not offered.
    pub const ENFORCE_STATS: u32 = 1 << 31;
}

/// One statistic's value (dispatch turns it into a typed parameter).
#[derive(Debug, Clone, PartialEq)]
pub enum StatValue {
    /// `VIR_TYPED_PARAM_INT`.
    Int(i32),
    /// `VIR_TYPED_PARAM_UINT`.
    UInt(u32),
    /// `VIR_TYPED_PARAM_ULLONG`.
    ULLong(u64),
    /// `VIR_TYPED_PARAM_DOUBLE`.
    Double(f64),
    /// `VIR_TYPED_PARAM_STRING`.
    Str(String),
}

/// One domain's record.
pub type Record = (DomRef, Vec<(String, StatValue)>);

impl Driver {
    /// The groups a request asks for: 0 means every group offered; with `ENFORCE_STATS`, a
    /// group not offered is refused as libvirt does.
    fn stats_groups(stats: u32, flags: u32) -> VirResult<u32> {
        if stats == 0 {
            return Ok(group::SUPPORTED);
        }
        let missing = stats & !group::SUPPORTED;
        if missing != 0 && flags & flag::ENFORCE_STATS != 0 {
            return Err(VirError::argument_unsupported(&format!(
                "Stats types bits 0x{missing:x} are not supported by this daemon"
            )));
        }
        Ok(stats & group::SUPPORTED)
    }

    /// `virConnectGetAllDomainStats` (`doms` `None`: every domain the filters in `flags`
    /// keep) and `virDomainListGetStats` (`doms`: the named ones that still exist, filtered
    /// the same way).
    pub async fn domain_stats(
        &self,
        doms: Option<Vec<Arc<DomainObj>>>,
        stats: u32,
        flags: u32,
    ) -> VirResult<Vec<Record>> {
        VirError::check_flags(
            flags,
            flag::FILTERS | flag::NOWAIT | flag::BACKING | flag::ENFORCE_STATS,
            "virConnectGetAllDomainStats",
        )?;
        let groups = Self::stats_groups(stats, flags)?;
        let objs = doms.unwrap_or_else(|| self.all());
        let mut out = Vec::with_capacity(objs.len());
        for obj in objs {
            let keep = obj.with(|s| !s.removed && Self::list_filter(s, flags & flag::FILTERS));
            if keep {
                out.push((obj.dom_ref(), self.stats_of(&obj, groups).await));
            }
        }
        Ok(out)
    }

    /// One domain's statistics. A backend that cannot answer leaves its counters out (as
    /// libvirt leaves out what a hypervisor could not read); the rest is still reported.
    async fn stats_of(&self, obj: &DomainObj, groups: u32) -> Vec<(String, StatValue)> {
        let mut v: Vec<(String, StatValue)> = Vec::new();
        let mut put = |k: String, val: StatValue| v.push((k, val));
        let (state, def, active, node) =
            obj.with(|s| (s.state(), s.def.clone(), s.active(), s.node.clone()));
        let node = node.and_then(|n| self.node(&n).cloned()).filter(|_| active);
        if groups & group::STATE != 0 {
            put("state.state".into(), StatValue::Int(state.code()));
            put("state.reason".into(), StatValue::Int(state.reason_code()));
        }
        if groups & group::BALLOON != 0 {
            put(
                "balloon.current".into(),
                StatValue::ULLong(def.current_memory_kib()),
            );
            put(
                "balloon.maximum".into(),
                StatValue::ULLong(def.memory_kib()),
            );
        }
        if groups & group::VCPU != 0 {
            put("vcpu.current".into(), StatValue::UInt(def.current_vcpus()));
            put("vcpu.maximum".into(), StatValue::UInt(def.max_vcpus()));
        }
        if groups & group::SENSORS != 0 {
            if let Some((age, s)) = node.as_ref().and_then(|n| self.sensors_of(&n.spec.name)) {
                if let Some(w) = s.power_watts {
                    put("metalvirt.power.watts".into(), StatValue::Double(w));
                }
                if let Some(c) = s.inlet_celsius {
                    put("metalvirt.inlet.celsius".into(), StatValue::Double(c));
                }
                put(
                    "metalvirt.sensors.age.ms".into(),
                    StatValue::ULLong(age.as_millis() as u64),
                );
            }
        }
        let tree = match def.tree() {
            Ok(t) => t,
            Err(_) => return v,
        };
        if groups & group::INTERFACE != 0 {
            if let Some(node) = node.as_ref() {
                let nics = tree.interfaces();
                put("net.count".into(), StatValue::UInt(nics.len() as u32));
                for (i, nic) in nics.iter().enumerate() {
                    let name = nic
                        .target_dev
                        .clone()
                        .or_else(|| nic.mac.clone())
                        .unwrap_or_default();
                    put(format!("net.{i}.name"), StatValue::Str(name));
                    let handle = nic_handle(&obj.uuid, nic.mac.as_deref().unwrap_or(""));
                    if let Ok(s) = node.nics.stats(&handle).await {
                        for (k, n) in [
                            ("rx.bytes", s.rx_bytes),
                            ("rx.pkts", s.rx_packets),
                            ("rx.errs", s.rx_errs),
                            ("rx.drop", s.rx_drop),
                            ("tx.bytes", s.tx_bytes),
                            ("tx.pkts", s.tx_packets),
                            ("tx.errs", s.tx_errs),
                            ("tx.drop", s.tx_drop),
                        ] {
                            put(format!("net.{i}.{k}"), StatValue::ULLong(n.max(0) as u64));
                        }
                    }
                }
            }
        }
        if groups & group::BLOCK != 0 {
            let disks = tree.disks();
            put("block.count".into(), StatValue::UInt(disks.len() as u32));
            let mapped = obj.with(|s| s.disk_handles());
            for (i, d) in disks.iter().enumerate() {
                let target = d.target_dev.clone().unwrap_or_default();
                put(format!("block.{i}.name"), StatValue::Str(target.clone()));
                if let Some(p) = d.source.file.as_ref().or(d.source.dev.as_ref()) {
                    put(format!("block.{i}.path"), StatValue::Str(p.clone()));
                }
                let handle = disk_handle(&obj.uuid, &target);
                let Some(node) = node.as_ref().filter(|_| mapped.contains(&handle)) else {
                    continue;
                };
                if let Ok(s) = node.disks.stats(&handle).await {
                    for (k, n) in [
                        ("rd.reqs", s.rd_req),
                        ("rd.bytes", s.rd_bytes),
                        ("rd.times", s.rd_total_ns),
                        ("wr.reqs", s.wr_req),
                        ("wr.bytes", s.wr_bytes),
                        ("wr.times", s.wr_total_ns),
                        ("fl.reqs", s.flush_req),
                        ("fl.times", s.flush_total_ns),
                    ] {
                        put(format!("block.{i}.{k}"), StatValue::ULLong(n.max(0) as u64));
                    }
                }
                if let Ok(s) = node.disks.info(&handle).await {
                    put(
                        format!("block.{i}.allocation"),
                        StatValue::ULLong(s.allocation),
                    );
                    put(format!("block.{i}.capacity"), StatValue::ULLong(s.capacity));
                    put(format!("block.{i}.physical"), StatValue::ULLong(s.physical));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_default_to_all_and_enforce_refuses_the_rest() {
        assert_eq!(Driver::stats_groups(0, 0).unwrap(), group::SUPPORTED);
        // CPU_TOTAL (2) is not offered: dropped, or refused with ENFORCE_STATS.
        assert_eq!(Driver::stats_groups(2 | 1, 0).unwrap(), 1);
        let e = Driver::stats_groups(2 | 1, flag::ENFORCE_STATS).unwrap_err();
        assert_eq!(e.code, crate::error::code::ARGUMENT_UNSUPPORTED);
        assert!(e.message.contains("0x2"), "{e}");
    }
}
