//! One domain's mutable state, in a module of its own so that its lifecycle state is private
//! to it: [`DomState::apply`] is the only way to change it (see `state.rs`).

use std::sync::Arc;
use std::time::Instant;

use super::state::{self, DomainState, Transition};
use super::store::Step;
use super::stored::{LiveXml, StoredDef};
use crate::domain::def::LiveInfo;

/// One domain's mutable state. Cheap to clone (definitions are shared).
#[derive(Debug, Clone)]
pub struct DomState {
    /// The current definition: the live one while active, else the persistent one.
    pub def: Arc<StoredDef>,
    /// The persistent definition waiting for the next start, while active.
    pub new_def: Option<Arc<StoredDef>>,
    /// Has a config file.
    pub persistent: bool,
    /// Autostart marker set.
    pub autostart: bool,
    /// `virDomainState` with its reason; changed only by [`DomState::apply`].
    state: DomainState,
    /// Id, -1 when inactive.
    pub id: i32,
    /// Bound node while active.
    pub node: Option<String>,
    /// Hardware steps done by the last start (undo order: reverse).
    pub journal: Vec<Step>,
    /// Removed from the registry; operations that raced with the removal must fail.
    pub removed: bool,
    /// Notes for `virDomainGetMessages`.
    pub messages: Vec<String>,
    /// A graceful shutdown was requested and not yet seen complete.
    pub shutdown_requested: bool,
    /// When the current run started (for uptime-derived figures).
    pub started: Option<Instant>,
    /// The persistent config was redefined while the domain ran (`virDomainIsUpdated`).
    pub updated: bool,
    /// The live XML of the current run, formatted once per change.
    pub live_xml: Option<Arc<LiveXml>>,
    /// A restart was asked for: until then, the server reading off is not a shutdown.
    pub power_grace_until: Option<Instant>,
    /// The BMC stopped answering the watcher; holds the state to restore when it answers.
    pub bmc_lost: Option<DomainState>,
    /// The watcher saw the server of a staged (or shut off) domain powered on (reported once).
    pub staged_seen_on: bool,
    /// Why this domain's run could not be recovered: it is left alone (see
    /// `lifecycle::quarantine_known`) until an operator clears it.
    pub quarantine: Option<String>,
}

impl DomState {
    /// The handles of the disks the run has mapped (its journal's disk steps).
    pub fn disk_handles(&self) -> Vec<String> {
        self.journal
            .iter()
            .filter_map(|st| match st {
                super::store::Step::Disk { handle, .. } => Some(handle.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn new(def: Arc<StoredDef>, persistent: bool) -> Self {
        DomState {
            def,
            new_def: None,
            persistent,
            autostart: false,
            state: DomainState::DEFINED,
            id: -1,
            node: None,
            journal: Vec::new(),
            removed: false,
            messages: Vec::new(),
            shutdown_requested: false,
            started: None,
            updated: false,
            live_xml: None,
            power_grace_until: None,
            bmc_lost: None,
            staged_seen_on: false,
            quarantine: None,
        }
    }

    /// Replaces the live definition of an active domain, keeping the persistent one aside
    /// first (they share one definition until the first live-only change).
    pub fn set_live_def(&mut self, def: Arc<StoredDef>, live_xml: Arc<LiveXml>) {
        if self.persistent && self.new_def.is_none() {
            self.new_def = Some(self.def.clone());
        }
        self.def = def;
        self.live_xml = Some(live_xml);
    }

    /// Adds a note for `virDomainGetMessages`, keeping the newest 32 (a flapping BMC must
    /// not grow the list without bound).
    pub fn note(&mut self, msg: String) {
        const KEEP: usize = 32;
        if self.messages.len() >= KEEP {
            self.messages.drain(..=self.messages.len() - KEEP);
        }
        self.messages.push(msg);
    }

    /// The id and node of the current run.
    pub fn live_info(&self) -> Option<LiveInfo> {
        self.node.clone().map(|node| LiveInfo { id: self.id, node })
    }

    /// Active (running or staged).
    pub fn active(&self) -> bool {
        self.state.is_active()
    }

    /// The state and its reason.
    pub fn state(&self) -> DomainState {
        self.state
    }

    /// Moves the lifecycle on (see [`state`]): the state and its reason change together, and
    /// the events that announce the change are returned for the caller to emit once the
    /// change is durable. A transition the table does not allow leaves the state as it is
    /// and is logged as the bug it is.
    pub(crate) fn apply(&mut self, t: Transition) -> Vec<state::Event> {
        match self.state.next(t) {
            Ok((to, events)) => {
                self.state = to;
                events
            }
            Err(e) => {
                tracing::error!(domain = %self.def.name(), "{e}");
                Vec::new()
            }
        }
    }

    /// The persistent definition (pending one first).
    pub fn persistent_def(&self) -> &Arc<StoredDef> {
        self.new_def.as_ref().unwrap_or(&self.def)
    }
}
