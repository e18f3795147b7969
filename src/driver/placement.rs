//! Placement: which free node a starting domain gets, and giving the node back.
//!
//! The order: its pin; else the node it had last (its disks' and NICs' home, "sticky"), if
//! free and big enough; else a node of the smallest kind that fits its vCPUs and memory
//! (best fit: big nodes stay free for big domains), within that kind a node no domain ever
//! had before one another domain had last (its home), lowest in the configuration first.
//!
//! Free nodes are kept in ordered sets per capacity class (vCPUs, memory); a lab has a few
//! classes (hardware models), so choosing is O(classes · log n) and never walks the nodes:
//! 1,000 starts at once on 10,000 nodes cost what one does on ten.
//!
//! The history (node → the last domain it had) is persisted for stickiness across restarts,
//! written outside the placement lock and group-committed ([`Driver::save_history`]): starts
//! at once share one write.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::Driver;
use crate::backend::Node;
use crate::domain::def::DomainDef;
use crate::error::{VirError, VirResult};

/// vCPUs and memory (KiB) of a kind of node.
type Class = (u32, u64);

#[derive(Debug, Default)]
struct FreeSet {
    /// Free nodes no domain ever had.
    unused: BTreeSet<usize>,
    /// Free nodes another domain had last.
    used: BTreeSet<usize>,
}

/// Which node each domain has and had. Nodes are indices into [`Driver::nodes`].
#[derive(Debug, Default)]
pub(super) struct Placement {
    class_of: Vec<Class>,
    /// Node → domain bound to it now.
    busy: HashMap<usize, Uuid>,
    /// Node name → the last domain bound to it (persisted).
    history: BTreeMap<String, Uuid>,
    /// Domain → the node it had last (the history read backwards).
    last: HashMap<Uuid, usize>,
    free: BTreeMap<Class, FreeSet>,
    /// Changes of `history`, for the group commit.
    generation: u64,
}

impl Placement {
    /// Every node free; `history` as saved (names no longer configured are dropped).
    pub(super) fn new(
        nodes: &[Node],
        index: &HashMap<String, usize>,
        mut history: BTreeMap<String, Uuid>,
    ) -> Placement {
        history.retain(|n, _| index.contains_key(n));
        let mut p = Placement {
            class_of: nodes
                .iter()
                .map(|n| (n.spec.cpus(), n.spec.memory_kib))
                .collect(),
            ..Placement::default()
        };
        for (name, uuid) in &history {
            p.last.insert(*uuid, index[name]);
        }
        p.history = history;
        for (i, n) in nodes.iter().enumerate() {
            let used = p.history.contains_key(&n.spec.name);
            p.put_free(i, used);
        }
        p
    }

    fn put_free(&mut self, i: usize, used: bool) {
        let set = self.free.entry(self.class_of[i]).or_default();
        if used {
            set.used.insert(i);
        } else {
            set.unused.insert(i);
        }
    }

    fn take_free(&mut self, i: usize) {
        if let Some(set) = self.free.get_mut(&self.class_of[i]) {
            set.unused.remove(&i);
            set.used.remove(&i);
        }
    }

    /// Binds node `i` to `uuid` (recovery: a run found alive or quarantined).
    pub(super) fn mark_busy(&mut self, i: usize, uuid: Uuid) {
        if self.busy.insert(i, uuid).is_none() {
            self.take_free(i);
        }
    }

    /// The domain bound to node `i`.
    pub(super) fn busy_with(&self, i: usize) -> Option<Uuid> {
        self.busy.get(&i).copied()
    }

    /// The nodes whose last domain was `uuid`.
    pub(super) fn history_of(&self, uuid: Uuid) -> Vec<String> {
        self.history
            .iter()
            .filter(|(_, u)| **u == uuid)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Free nodes and the domain each had last.
    pub(super) fn free_with_history(&self, nodes: &[Node]) -> Vec<(usize, Uuid)> {
        self.free
            .values()
            .flat_map(|s| s.used.iter())
            .filter_map(|&i| Some((i, *self.history.get(&nodes[i].spec.name)?)))
            .collect()
    }

    /// The free node best for a domain of `cpus` and `mem` KiB that has no pin.
    fn choose(&self, uuid: Uuid, cpus: u32, mem: u64) -> Option<usize> {
        let fits = |c: &Class| c.0 >= cpus && c.1 >= mem;
        if let Some(&i) = self.last.get(&uuid) {
            if !self.busy.contains_key(&i) && fits(&self.class_of[i]) {
                return Some(i);
            }
        }
        self.free
            .range((cpus, 0)..)
            .filter(|(c, _)| fits(c))
            .find_map(|(_, s)| s.unused.first().or(s.used.first()))
            .copied()
    }

    /// Binds node `i` to `uuid`; true when the history changed (and needs saving).
    fn take(&mut self, i: usize, uuid: Uuid, name: &str) -> bool {
        self.mark_busy(i, uuid);
        if self.history.get(name) == Some(&uuid) {
            return false;
        }
        if let Some(old) = self.history.insert(name.to_string(), uuid) {
            if self.last.get(&old) == Some(&i) {
                self.last.remove(&old);
            }
        }
        self.last.insert(uuid, i);
        self.generation += 1;
        true
    }

    /// Frees node `i` if `uuid` holds it.
    pub(super) fn release(&mut self, i: usize, uuid: Uuid, name: &str) {
        if self.busy.get(&i) == Some(&uuid) {
            self.busy.remove(&i);
            let used = self.history.contains_key(name);
            self.put_free(i, used);
        }
    }
}

impl Driver {
    /// Picks and binds a node for a starting domain; the history is saved before this
    /// returns (group-committed with other starts).
    pub(super) async fn place(&self, uuid: Uuid, def: &DomainDef) -> VirResult<Node> {
        let (node, changed) = self.choose_node(uuid, def)?;
        if changed {
            self.save_history().await;
        }
        Ok(node)
    }

    fn choose_node(&self, uuid: Uuid, def: &DomainDef) -> VirResult<(Node, bool)> {
        let cpus = def.max_vcpus();
        let mem = def.memory_kib();
        let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let i = if let Some(pin) = def.node_pin() {
            let i = *self.node_index.get(&pin).ok_or_else(|| {
                VirError::config_unsupported(&format!("node '{pin}' is not part of this host"))
            })?;
            let n = &self.nodes[i];
            if let Some(other) = p.busy_with(i) {
                if other != uuid {
                    return Err(VirError::operation_failed(&format!(
                        "node '{pin}' is in use by domain {other}"
                    )));
                }
            }
            if n.spec.cpus() < cpus || n.spec.memory_kib < mem {
                return Err(VirError::operation_failed(&format!(
                    "node '{pin}' has {} CPUs and {} MiB of memory, the domain needs {cpus} CPUs and {} MiB",
                    n.spec.cpus(),
                    n.spec.memory_kib / 1024,
                    mem / 1024
                )));
            }
            i
        } else {
            p.choose(uuid, cpus, mem).ok_or_else(|| {
                VirError::operation_failed(&format!(
                    "no free node with at least {cpus} CPUs and {} MiB of memory",
                    mem / 1024
                ))
            })?
        };
        let node = &self.nodes[i];
        let changed = p.take(i, uuid, &node.spec.name);
        Ok((node.clone(), changed))
    }

    /// Gives `node` back if `uuid` holds it.
    pub(super) fn release(&self, node: &str, uuid: Uuid) {
        if let Some(&i) = self.node_index.get(node) {
            let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            p.release(i, uuid, node);
        }
    }

    /// Binds `node` to `uuid` without choosing (recovery).
    pub(super) fn mark_busy(&self, node: &str, uuid: Uuid) {
        if let Some(&i) = self.node_index.get(node) {
            let mut p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            p.mark_busy(i, uuid);
        }
    }

    /// Writes the placement history if it changed since the last write. Callers that come
    /// while a write is under way wait for it and then write once for all of them, so many
    /// starts share one write; the snapshot is taken after the wait, so it holds every
    /// change made before the call. A failed write is logged: the history only makes
    /// placement sticky, and the next change writes it again.
    pub(super) async fn save_history(&self) {
        let wanted = self.placement_generation();
        let mut written = self.history_written.lock().await;
        if *written >= wanted {
            return;
        }
        let (generation, snapshot) = {
            let p = self.placement.lock().unwrap_or_else(|e| e.into_inner());
            (p.generation, p.history.clone())
        };
        match self.store.save_node_history(snapshot).await {
            Ok(()) => *written = generation,
            Err(e) => tracing::warn!("cannot save node history: {e}"),
        }
    }

    fn placement_generation(&self) -> u64 {
        self.placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(classes: &[(u32, u64)]) -> (Vec<Class>, Placement) {
        let mut p = Placement {
            class_of: classes.to_vec(),
            ..Placement::default()
        };
        for i in 0..classes.len() {
            p.put_free(i, false);
        }
        (classes.to_vec(), p)
    }

    #[test]
    fn best_fit_then_unused_then_lowest() {
        // Nodes 0 and 2 are big, 1 and 3 small.
        let (_, mut p) = lab(&[(64, 512), (16, 64), (64, 512), (16, 64)]);
        let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(Uuid::from_u128);
        // A small domain gets a small node, a big one a big node.
        assert_eq!(p.choose(a, 8, 32), Some(1));
        p.take(1, a, "n1");
        assert_eq!(p.choose(b, 32, 32), Some(0));
        p.take(0, b, "n0");
        assert_eq!(p.choose(c, 8, 32), Some(3));
        p.take(3, c, "n3");
        // No small node left: a small domain takes a big one rather than nothing.
        assert_eq!(p.choose(d, 8, 32), Some(2));
        // Too big for every node, in vCPUs or in memory.
        assert_eq!(p.choose(d, 128, 32), None);
        assert_eq!(p.choose(d, 8, 1024), None);
        // a stops: its small node is the best fit for e too (a node's history does not
        // keep it from others when nothing else of its kind is free).
        p.release(1, a, "n1");
        assert_eq!(p.choose(e, 8, 32), Some(1));
        p.take(1, e, "n1");
        // a's home is e's now: a gets the best other, and the history forgets a.
        assert_eq!(p.choose(a, 8, 32), Some(2));
        assert_eq!(p.last.get(&a), None);
    }

    #[test]
    fn a_home_is_kept_for_its_domain_while_unused_nodes_remain() {
        let (_, mut p) = lab(&[(8, 8), (8, 8), (8, 8)]);
        let [a, b] = [1, 2].map(Uuid::from_u128);
        p.take(0, a, "n0");
        p.release(0, a, "n0");
        // Node 0 is a's home: b gets a node nobody had.
        assert_eq!(p.choose(b, 1, 1), Some(1));
        assert_eq!(p.choose(a, 1, 1), Some(0));
    }

    #[test]
    fn sticky_survives_and_history_generation_counts_changes() {
        let (_, mut p) = lab(&[(8, 8), (8, 8), (8, 8)]);
        let a = Uuid::from_u128(1);
        assert!(p.take(2, a, "n2"));
        assert!(!p.take(2, a, "n2"), "same binding: nothing to save");
        p.release(2, a, "n2");
        // Node 2 is "used" now; 0 and 1 were never used, but a goes home.
        assert_eq!(p.choose(a, 1, 1), Some(2));
        assert_eq!(p.choose(Uuid::from_u128(9), 1, 1), Some(0));
        assert_eq!(p.generation, 1);
        // Releasing with the wrong owner changes nothing.
        p.mark_busy(0, a);
        p.release(0, Uuid::from_u128(9), "n0");
        assert_eq!(p.busy_with(0), Some(a));
    }
}
