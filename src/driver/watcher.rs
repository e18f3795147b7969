//! The power watcher: notices what happens to servers out of band.
//!
//! Every bound node (running or staged domain), and every free node whose last domain is shut
//! off, is polled once per interval (jittered by up to a tenth), at most
//! `watcher.max_concurrency` BMCs at a time. A BMC that fails is polled
//! less often (interval × 2ⁿ up to `watcher.max_backoff_ms`) and the domain's state reason
//! becomes UNKNOWN (restored when the BMC answers again) — the domain is never turned off
//! for a BMC that does not answer. What it acts on:
//!
//! | domain  | server reads | action                                                        |
//! |---------|--------------|---------------------------------------------------------------|
//! | running | Off          | release disks/NICs; SHUTOFF/SHUTDOWN (FAILED with a BMC fault) |
//! | running | On           | ends a restart's grace period                                  |
//! | staged  | On           | reported once in the log and GET_MESSAGES; never forced off    |
//! | shutoff | On           | the same, on the domain that last ran there                    |
//!
//! With the power state of a running domain's server, every sixth round, the watcher also
//! reads the server's sensors (power draw, inlet temperature) into a cache that domain
//! statistics read (`metalvirt.*`): a statistics call never waits for a BMC.
//!
//! A domain whose job is busy (a start, stop or restart in progress) is left for the next
//! round, and a server reading Off within a restart's grace period is restarting, not off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::state::{st, Shutoff, Transition};
use super::{DomainObj, Driver};
use crate::backend::{BResult, ErrorKind, Node, PowerReading, PowerState, Sensors};

/// The schedule of one node.
#[derive(Debug, Clone)]
pub(super) struct NodeWatch {
    /// Consecutive failed queries.
    fails: u32,
    /// Not polled before this.
    next_due: Instant,
}

/// Sensors are read every this many watcher rounds (every 30 s at the default 5 s).
const SENSOR_ROUNDS: u32 = 6;

/// A domain's run when a reading was taken: its id and node index (-1 and none: shut off).
type Run = (i32, Option<usize>);

impl Driver {
    /// Starts the watcher task.
    pub(super) fn start_watcher(self: &Arc<Self>) {
        let d = self.clone();
        tokio::spawn(async move {
            let base = d.cfg.watch_interval();
            loop {
                let jitter = rand::random_range(0..=base.as_millis() as u64 / 10);
                tokio::time::sleep(base + Duration::from_millis(jitter)).await;
                d.watch_once().await;
            }
        });
        // BMCs that announce power changes are read as soon as they do, besides the rounds.
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(mut rx) = node.power.power_events() else {
                continue;
            };
            let d = self.clone();
            tokio::spawn(async move {
                rx.borrow_and_update();
                while rx.changed().await.is_ok() {
                    d.watch_nodes(Some(i)).await;
                }
            });
        }
    }

    /// One pass: polls every bound node that is due and acts on what it reads.
    pub async fn watch_once(&self) {
        self.watch_nodes(None).await
    }

    /// A pass over every node that is due, or over node `only` (due or not: its BMC just
    /// announced a power change; its sensors are left for the rounds).
    async fn watch_nodes(&self, only: Option<usize>) {
        let now = Instant::now();
        // Each reading is for one run: (id, node) as it was when the node was chosen. By the
        // time the reading is acted on, the domain may have stopped and started again,
        // elsewhere: an old reading must not stop the new run.
        let mut bound: Vec<(Arc<DomainObj>, usize, Run)> = self
            .all()
            .into_iter()
            .filter_map(|o| {
                let (i, id) = o.with(|s| {
                    if !s.active() || s.quarantine.is_some() {
                        return None;
                    }
                    Some((*self.node_index.get(s.node.as_deref()?)?, s.id))
                })?;
                Some((o, i, (id, Some(i))))
            })
            .filter(|(_, i, _)| only.is_none_or(|n| n == *i))
            .collect();
        // Free nodes whose last domain is shut off: a server powered on behind its back.
        let last = self
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free_with_history(&self.nodes);
        for (i, uuid) in last {
            if only.is_some_and(|n| n != i) {
                continue;
            }
            let Ok(obj) = self.lookup_uuid(&uuid) else {
                continue;
            };
            if obj.with(|s| s.state().code() == st::SHUTOFF && !s.removed) {
                bound.push((obj, i, (-1, None)));
            }
        }
        let due: Vec<_> = {
            let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            let watched: std::collections::HashSet<usize> =
                bound.iter().map(|(_, i, _)| *i).collect();
            if only.is_none() {
                w.retain(|i, _| watched.contains(i));
            }
            bound
                .into_iter()
                .filter(|(_, i, _)| only.is_some() || w.get(i).is_none_or(|x| x.next_due <= now))
                .collect()
        };
        let slots = Semaphore::new(self.cfg.watcher.max_concurrency);
        let slots = &slots;
        let readings = join_all(due.into_iter().map(|(obj, i, run)| async move {
            let _slot = slots.acquire().await;
            let node = &self.nodes[i];
            let r = node.power.state().await;
            // The sensors of a running domain's server, with the power state every
            // SENSOR_ROUNDS rounds (they change slowly; the BMC is spared the requests):
            // statistics read this cache and never wait for a BMC.
            let sensors = match (&r, run.0) {
                (Ok(_), id) if id != -1 && only.is_none() && self.sensors_due(i) => {
                    Some(node.power.sensors().await)
                }
                _ => None,
            };
            (obj, i, run, r, sensors)
        }))
        .await;
        for (obj, i, run, r, sensors) in readings {
            if let Some(s) = sensors {
                self.note_sensors(i, s);
            }
            self.schedule(i, r.is_ok());
            self.observe(&obj, &self.nodes[i], &run, r).await;
        }
    }

    /// Keeps a node's sensor reading; a failed reading keeps the last one (its age tells).
    /// A BMC that reads none is remembered as such, so it is asked again only when a reading
    /// would be due, not every round.
    fn note_sensors(&self, node: usize, r: BResult<Sensors>) {
        let mut m = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(s) => {
                m.insert(node, (Instant::now(), Some(s)));
            }
            Err(e) if e.kind == ErrorKind::Unsupported => {
                m.insert(node, (Instant::now(), None));
            }
            Err(e) => {
                tracing::debug!(node = %self.nodes[node].spec.name, "cannot read the sensors: {e}")
            }
        }
    }

    /// Whether `node`'s sensors should be read this round: never asked yet, or last asked
    /// `SENSOR_ROUNDS` intervals ago.
    fn sensors_due(&self, node: usize) -> bool {
        let every = self.cfg.watch_interval().saturating_mul(SENSOR_ROUNDS);
        let m = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&node).is_none_or(|(at, _)| at.elapsed() >= every)
    }

    /// The last sensor reading of `node` and its age; none when the BMC reads no sensor.
    pub(super) fn sensors_of(&self, node: &str) -> Option<(Duration, Sensors)> {
        let i = *self.node_index.get(node)?;
        let m = self.sensors.lock().unwrap_or_else(|e| e.into_inner());
        let (at, s) = m.get(&i)?;
        let s = (*s).filter(|s| s.power_watts.is_some() || s.inlet_celsius.is_some())?;
        Some((at.elapsed(), s))
    }

    fn schedule(&self, node: usize, ok: bool) {
        let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let e = w.entry(node).or_insert(NodeWatch {
            fails: 0,
            next_due: Instant::now(),
        });
        if ok {
            e.fails = 0;
            e.next_due = Instant::now();
        } else {
            e.fails += 1;
            let pause = self
                .cfg
                .watch_interval()
                .saturating_mul(1 << e.fails.min(10))
                .min(self.cfg.watch_max_backoff());
            e.next_due = Instant::now() + pause;
        }
    }

    async fn observe(
        &self,
        obj: &Arc<DomainObj>,
        node: &Node,
        run: &Run,
        r: BResult<PowerReading>,
    ) {
        // State changes need the job: a start, stop or restart in progress owns the domain.
        let Ok(_job) = obj.job.try_lock() else {
            return;
        };
        // A reading of another run (or of the node a shut-off domain last ran on, which has
        // started since) says nothing about this one.
        let same_node = |s: &super::DomState| match (&s.node, run.1) {
            (Some(n), Some(i)) => *n == self.nodes[i].spec.name,
            (None, None) => true,
            _ => false,
        };
        if obj.with(|s| s.id != run.0 || !same_node(s)) {
            return;
        }
        let n = &node.spec.name;
        let reading = match r {
            Err(e) => {
                let first = obj.with(|s| {
                    if s.removed || !s.active() || s.bmc_lost.is_some() {
                        return false;
                    }
                    s.bmc_lost = Some(s.state());
                    s.apply(Transition::BmcLost);
                    s.note(format!(
                        "the BMC of node {n} stopped answering; the server's power state is unknown: {e}"
                    ));
                    true
                });
                if first {
                    tracing::warn!(node = %n, "power watcher: BMC not answering; domain state reason set to unknown: {e}");
                } else {
                    tracing::debug!(node = %n, "power watcher: BMC still not answering: {e}");
                }
                return;
            }
            Ok(r) => r,
        };
        let (state, back) = obj.with(|s| {
            let back = s.bmc_lost.take().map(|old| {
                s.apply(Transition::BmcBack(old));
                s.note(format!("the BMC of node {n} answers again"));
            });
            (s.state().code(), back.is_some())
        });
        if back {
            tracing::info!(node = %n, "power watcher: BMC answers again");
        }
        match (state, reading.state) {
            (st::RUNNING, PowerState::Off) => {
                let restarting_or_gone = obj
                    .with(|s| s.removed || s.power_grace_until.is_some_and(|t| t > Instant::now()));
                if restarting_or_gone {
                    return;
                }
                let r = obj.dom_ref();
                let why = match &reading.fault {
                    Some(f) => {
                        tracing::warn!(domain = %r.name, node = %n, "server seen powered off with a fault: {f}");
                        obj.with(|s| {
                            s.note(format!("server of node {n} went off with a fault: {f}"))
                        });
                        Shutoff::Failed
                    }
                    None => {
                        tracing::info!(domain = %r.name, node = %n, "server seen powered off");
                        let events = obj.with(|s| s.apply(Transition::ShutdownFinished));
                        self.emit_all(&r, &events);
                        Shutoff::Shutdown
                    }
                };
                if let Err(e) = self.stop_locked(obj, why, false).await {
                    tracing::error!(domain = %r.name, "cleanup after power off failed: {e}");
                }
            }
            (st::RUNNING, PowerState::On) => obj.with(|s| s.power_grace_until = None),
            (st::PAUSED | st::SHUTOFF, PowerState::On | PowerState::PoweringOn) => {
                let what = if state == st::PAUSED {
                    "staged"
                } else {
                    "shut off (it last ran there)"
                };
                let first = obj.with(|s| {
                    let first = !s.staged_seen_on;
                    if first {
                        s.staged_seen_on = true;
                        s.note(format!(
                            "the server of node {n} was powered on out of band while the domain is {what}; metalvirt leaves it on"
                        ));
                    }
                    first
                });
                if first {
                    let name = obj.with(|s| s.def.name().to_string());
                    tracing::warn!(node = %n, domain = %name, "power watcher: server is powered on (out of band) while its domain is {what}; leaving it");
                }
            }
            (st::PAUSED | st::SHUTOFF, PowerState::Off) => obj.with(|s| s.staged_seen_on = false),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{stored::StoredDef, DomState};

    #[test]
    fn notes_keep_the_newest_32() {
        let def = StoredDef::parse_xml(
            "<domain type='kvm'><name>n</name><memory>1024</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>",
        )
        .unwrap();
        let mut s = DomState::new(def, true);
        for i in 0..40 {
            s.note(format!("m{i}"));
        }
        assert_eq!(s.messages.len(), 32);
        assert_eq!(s.messages[0], "m8");
        assert_eq!(s.messages[31], "m39");
    }
}
