//! Placement: which free node a starting domain gets (its pin, else the first node that
//! fits its vCPUs and memory), and giving the node back.

use uuid::Uuid;

use super::Driver;
use crate::backend::Node;
use crate::domain::def::DomainDef;
use crate::error::{VirError, VirResult};

impl Driver {
    pub(super) fn place(&self, uuid: Uuid, def: &DomainDef) -> VirResult<Node> {
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

    pub(super) fn release(&self, node: &str, uuid: Uuid) {
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        if p.busy.get(node) == Some(&uuid) {
            p.busy.remove(node);
        }
    }
}
