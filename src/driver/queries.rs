//! Domain queries whose answer is domain logic, not wire encoding: what dispatch used to
//! decide itself (suspend, vcpus, messages, memory statistics).

use std::sync::Arc;

use super::state::DomainState;
use super::{DomainObj, Driver};
use crate::error::{VirError, VirResult};

impl Driver {
    /// Refuses a call that needs a running domain as libvirt does ("domain is not running").
    pub fn require_running(&self, obj: &DomainObj) -> VirResult<()> {
        if obj.with(|s| s.active()) {
            Ok(())
        } else {
            Err(VirError::operation_invalid("domain is not running"))
        }
    }

    /// `virDomainSuspend`: a staged domain is already paused; a running server's CPUs
    /// cannot be paused.
    pub fn suspend(&self, obj: &Arc<DomainObj>) -> VirResult<()> {
        match obj.with(|s| s.state()) {
            DomainState::Paused(_) => Ok(()),
            s if s.is_active() => Err(VirError::operation_unsupported(
                "suspending (pausing the CPUs of) is not possible for a bare-metal server",
            )),
            _ => Err(VirError::operation_invalid("domain is not running")),
        }
    }

    /// `virDomainGetVcpus`: the running domain's vcpu count and the node it runs on.
    pub fn vcpus(&self, obj: &Arc<DomainObj>) -> VirResult<(u32, Option<String>)> {
        let (active, n, node) = obj.with(|s| (s.active(), s.def.current_vcpus(), s.node.clone()));
        if !active {
            return Err(VirError::operation_invalid(
                "cannot list vcpus for an inactive domain",
            ));
        }
        Ok((n, node))
    }

    /// `virDomainGetMessages`: the domain's notes, after a first one saying what on its node
    /// is simulated (all of it, or its disks or NICs).
    pub fn messages(&self, obj: &Arc<DomainObj>) -> Vec<String> {
        let (mut msgs, node) = obj.with(|s| (s.messages.clone(), s.node.clone()));
        if let Some(n) = node.and_then(|n| self.nodes().iter().find(|x| x.spec.name == n)) {
            let sim = n.spec.simulated;
            let note = if sim.all() {
                Some(format!(
                    "runs on {} of the SIMULATED lab: no real server is powered, no disk or NIC is really mapped",
                    n.spec.name
                ))
            } else {
                sim.sentence()
                    .map(|s| format!("runs on {} ({}): its {s}", n.spec.name, n.spec.bmc_desc))
            };
            if let Some(note) = note {
                msgs.insert(0, note);
            }
        }
        msgs
    }

    /// `virDomainMemoryStats` as (tag, value) pairs: bare metal has no balloon, so only the
    /// actual (installed = defined) memory, tag 6 (`VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON`).
    pub fn memory_stats(&self, obj: &Arc<DomainObj>) -> VirResult<Vec<(i32, u64)>> {
        if !obj.with(|s| s.active()) {
            return Err(VirError::operation_invalid("domain is not running"));
        }
        Ok(vec![(6, obj.with(|s| s.def.current_memory_kib()))])
    }
}
