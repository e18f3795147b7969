//! Journaled hardware steps: what a start, a hot-plug, a hot-unplug, an undo and a
//! reconciliation do to a node's disks and NICs, in one place.
//!
//! A step is recorded in the domain's journal ([`Step`]) before it runs; the callers write
//! that record durably, because only a recorded step can be undone after a crash. Running
//! and undoing a step happen here, so every backend failure reaches the client through the
//! one map ([`super::backend_error`]) and in the same words wherever it happened.

use futures::future::join_all;

use super::store::Step;
use crate::backend::{BackendError, DiskSpec, NicSpec, Node};
use crate::error::{VirError, VirResult};

/// A device to bring up on a node: a disk to map or a NIC to plug.
#[derive(Clone, Copy)]
pub(super) enum Plug<'a> {
    /// Map a volume and present it to the host.
    Disk(&'a DiskSpec),
    /// Plug a DPU function into the virtual switch.
    Nic(&'a NicSpec),
}

impl Plug<'_> {
    /// The backend handle the step is known by.
    pub(super) fn handle(&self) -> &str {
        match self {
            Plug::Disk(d) => &d.handle,
            Plug::Nic(n) => &n.handle,
        }
    }

    /// The journal record written before the step runs; the host-side device is filled in
    /// by [`set_device`] once the step has run.
    pub(super) fn record(&self) -> Step {
        match self {
            Plug::Disk(d) => Step::Disk {
                handle: d.handle.clone(),
                target: d.target.clone(),
                device: None,
                unit: d.unit,
            },
            Plug::Nic(n) => Step::Nic {
                handle: n.handle.clone(),
                mac: n.mac.clone(),
                representor: None,
            },
        }
    }

    /// Runs the step; returns the host-side device (block device or representor).
    pub(super) async fn run(&self, node: &Node) -> VirResult<String> {
        let n = &node.spec.name;
        match self {
            Plug::Disk(d) => node.disks.attach(d).await.map_err(|e| {
                super::backend_error(
                    &format!("cannot map disk {} ({}) on {n}", d.target, d.source),
                    &e,
                )
            }),
            Plug::Nic(x) => node.nics.plug(x).await.map_err(|e| {
                super::backend_error(&format!("cannot plug NIC {} on {n}", x.mac), &e)
            }),
        }
    }
}

/// Runs `plugs` at once (a start maps all its disks and plugs all its NICs in parallel) and
/// writes each device that came up into `journal`. All have finished when it returns; the
/// error is the first failure in the order of `plugs`.
pub(super) async fn run_all(
    node: &Node,
    plugs: &[Plug<'_>],
    journal: &mut [Step],
) -> VirResult<()> {
    let results = join_all(plugs.iter().map(|p| p.run(node))).await;
    let mut first_err = None;
    for (p, r) in plugs.iter().zip(results) {
        match r {
            Ok(dev) => set_device(journal, p.handle(), dev),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A step that could not be undone: what was tried, and the backend's reason.
#[derive(Debug)]
pub(super) struct UndoFailed {
    what: String,
    cause: BackendError,
}

impl UndoFailed {
    /// The libvirt error for a client waiting on the undo (a hot-unplug).
    pub(super) fn to_vir(&self) -> VirError {
        super::backend_error(&self.what, &self.cause)
    }
}

impl std::fmt::Display for UndoFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.cause)
    }
}

/// Undoes one recorded disk or NIC step (unmap / unplug). Power steps are not undone here.
pub(super) async fn undo(node: &Node, step: &Step) -> Result<(), UndoFailed> {
    let n = &node.spec.name;
    let (r, what) = match step {
        Step::Disk { handle, target, .. } => (
            node.disks.detach(handle).await,
            format!("cannot unmap disk {target} on {n}"),
        ),
        Step::Nic { handle, mac, .. } => (
            node.nics.unplug(handle).await,
            format!("cannot unplug NIC {mac} on {n}"),
        ),
        Step::PowerOn => return Ok(()),
    };
    r.map_err(|cause| UndoFailed { what, cause })
}

/// Undoes every disk and NIC step of `journal` at once; returns the failures.
pub(super) async fn undo_all(node: &Node, journal: &[Step]) -> Vec<UndoFailed> {
    let undone = journal
        .iter()
        .rev()
        .filter(|s| s.handle().is_some())
        .map(|s| undo(node, s));
    join_all(undone)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Writes the host-side device of the step known by `handle` into its journal record.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(handle: &str) -> Step {
        Step::Disk {
            handle: handle.into(),
            target: "vda".into(),
            device: None,
            unit: Some(1),
        }
    }

    #[test]
    fn the_device_lands_in_its_own_record_only() {
        let mut journal = vec![
            disk("a"),
            disk("b"),
            Step::Nic {
                handle: "c".into(),
                mac: "fa:16:3e:00:00:01".into(),
                representor: None,
            },
            Step::PowerOn,
        ];
        set_device(&mut journal, "b", "/dev/nvme1n1".into());
        set_device(&mut journal, "c", "pf0vf3".into());
        assert!(matches!(&journal[0], Step::Disk { device: None, .. }));
        assert!(matches!(&journal[1], Step::Disk { device: Some(d), .. } if d == "/dev/nvme1n1"));
        assert!(matches!(&journal[2], Step::Nic { representor: Some(r), .. } if r == "pf0vf3"));
        assert_eq!(journal[3], Step::PowerOn);
    }
}
