//! The driver core: the domain registry, the lifecycle state machine and its hardware
//! pipelines.
//!
//! Locking (libvirt's qemu-threads rules, in Rust):
//! - `Driver::reg` (std `RwLock`) guards only the name/uuid/id maps; held for map operations.
//! - `DomainObj::st` (std `Mutex`) guards one domain's state; held for field reads and writes,
//!   never across an `.await`.
//! - `DomainObj::job` (tokio `Mutex`) serialises mutating operations on one domain; slow
//!   backend calls happen under it. Reads never take it. After taking it, operations re-check
//!   that the domain still exists and is in the state they expect.
//! - Lock order: `reg` → `st`; `job` is always taken before either.

mod commitlog;
mod console;
mod devices;
mod domstate;
mod iotune;
mod lifecycle;
mod placement;
mod plan;
mod queries;
mod recovery;
pub mod state;
mod stats;
mod steps;
pub mod store;
pub mod stored;
pub mod volumes;
mod watcher;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use crate::backend::Node;
use crate::config::Config;
use crate::domain::def::DomainDef;
use crate::error::{VirError, VirResult};
use crate::events::{DomainEvent, EventBus, EventKind};
use crate::secrets::Secrets;
pub use console::ConsoleSession;
pub use domstate::DomState;
pub use iotune::TuneParam;
use state::st;
pub use stats::{Record as StatsRecord, StatValue};
use store::{Status, Store};
use stored::StoredDef;

/// A domain as clients see it in `remote_nonnull_domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomRef {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// Id, -1 when inactive.
    pub id: i32,
}

/// A domain: immutable uuid, a state lock and a job lock.
#[derive(Debug)]
pub struct DomainObj {
    /// Immutable.
    pub uuid: Uuid,
    /// Serialises mutating operations (held across backend calls).
    job: tokio::sync::Mutex<()>,
    /// The API holding the job (for "cannot acquire state change lock (held by …)").
    job_holder: Mutex<&'static str>,
    /// Bumped by a destroy that finds a start holding the job: the start stops waiting for
    /// its hardware and rolls back.
    cancel: tokio::sync::watch::Sender<u64>,
    /// Short-lived lock on the state; never held across `.await`.
    st: Mutex<DomState>,
}

/// The job of a domain, held for the length of one mutating operation.
pub(crate) struct Job<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

/// The job holder that a destroy may cancel.
pub(crate) const START_JOB: &str = "virDomainCreate";

impl DomainObj {
    fn new(uuid: Uuid, s: DomState) -> Arc<Self> {
        Arc::new(DomainObj {
            uuid,
            job: tokio::sync::Mutex::new(()),
            job_holder: Mutex::new(""),
            cancel: tokio::sync::watch::Sender::new(0),
            st: Mutex::new(s),
        })
    }

    /// Takes the job for `api`, waiting at most `wait` for the operation holding it (as
    /// libvirt's 30 s state change lock), then `VIR_ERR_OPERATION_TIMEOUT`.
    pub(crate) async fn begin_job(
        &self,
        api: &'static str,
        wait: std::time::Duration,
    ) -> VirResult<Job<'_>> {
        self.check_quarantine()?;
        let guard = match tokio::time::timeout(wait, self.job.lock()).await {
            Ok(g) => g,
            Err(_) => return Err(self.lock_timeout()),
        };
        *self.job_holder.lock().unwrap_or_else(|e| e.into_inner()) = api;
        Ok(Job { _guard: guard })
    }

    /// Takes the job for a destroy: a start holding it is asked to give up (and keeps being
    /// asked, so one that only begins waiting now is caught too); any other holder is waited
    /// for as [`DomainObj::begin_job`] does. Returns whether a start was cancelled.
    pub(crate) async fn begin_destroy_job(
        &self,
        wait: std::time::Duration,
    ) -> VirResult<(Job<'_>, bool)> {
        self.check_quarantine()?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut cancelled = false;
        loop {
            if self.starting() {
                self.cancel_start();
                cancelled = true;
            }
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(std::time::Duration::from_millis(50));
            if let Ok(guard) = tokio::time::timeout(step, self.job.lock()).await {
                *self.job_holder.lock().unwrap_or_else(|e| e.into_inner()) = "virDomainDestroy";
                return Ok((Job { _guard: guard }, cancelled));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.lock_timeout());
            }
        }
    }

    /// libvirt's answer when the job stays taken: who holds it.
    fn lock_timeout(&self) -> VirError {
        let holder = *self.job_holder.lock().unwrap_or_else(|e| e.into_inner());
        VirError::operation_timeout(&format!(
            "cannot acquire state change lock (held by {holder})"
        ))
    }

    /// A quarantined domain refuses every operation (its server is left as it was).
    fn check_quarantine(&self) -> VirResult<()> {
        match self.with(|s| s.quarantine.clone()) {
            None => Ok(()),
            Some(why) => Err(VirError::operation_invalid(&format!(
                "domain is quarantined: {why}; see docs/RELIABILITY.md, \"Quarantine\""
            ))),
        }
    }

    /// Takes the job without a time limit (background work: reconcile, autostart).
    pub(crate) async fn begin_internal_job(&self, what: &'static str) -> Job<'_> {
        let guard = self.job.lock().await;
        *self.job_holder.lock().unwrap_or_else(|e| e.into_inner()) = what;
        Job { _guard: guard }
    }

    /// Whether a start holds the job now.
    pub(crate) fn starting(&self) -> bool {
        *self.job_holder.lock().unwrap_or_else(|e| e.into_inner()) == START_JOB
            && self.job.try_lock().is_err()
    }

    /// Asks a start holding the job to give up and roll back.
    pub(crate) fn cancel_start(&self) {
        self.cancel.send_modify(|n| *n += 1);
    }

    /// A receiver that sees the cancellations sent after this call.
    pub(crate) fn cancel_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        let mut rx = self.cancel.subscribe();
        rx.mark_unchanged();
        rx
    }

    /// Runs `f` on the state under the short lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut DomState) -> T) -> T {
        let mut g = self.st.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A consistent copy of the state.
    pub fn snapshot(&self) -> DomState {
        self.with(|s| s.clone())
    }

    /// The wire identity.
    pub fn dom_ref(&self) -> DomRef {
        self.with(|s| self.dom_ref_of(s))
    }

    /// The reference, from state the caller already holds locked.
    fn dom_ref_of(&self, s: &DomState) -> DomRef {
        DomRef {
            name: s.def.name().to_string(),
            uuid: self.uuid,
            id: s.id,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_uuid: HashMap<Uuid, Arc<DomainObj>>,
    by_name: HashMap<String, Uuid>,
    by_id: HashMap<i32, Uuid>,
}

/// The driver.
pub struct Driver {
    cfg: Config,
    nodes: Vec<Node>,
    /// Node name → index in `nodes`.
    node_index: HashMap<String, usize>,
    store: Store,
    reg: RwLock<Registry>,
    placement: Mutex<placement::Placement>,
    /// The placement history generation last written (see `save_history`).
    history_written: tokio::sync::Mutex<u64>,
    next_id: AtomicI32,
    /// Domain events.
    pub events: EventBus,
    hostname: String,
    /// libvirt secrets (disk credentials).
    pub secrets: Arc<Secrets>,
    /// Our domain schema, installed in the state directory (for the VALIDATE flags).
    schema: std::path::PathBuf,
    /// The power watcher's per-node schedule.
    watch: Mutex<HashMap<usize, watcher::NodeWatch>>,
    /// The last sensor reading of each node a domain runs on, taken by the watcher with
    /// the power state: statistics never wait for a BMC.
    sensors: Mutex<HashMap<usize, (std::time::Instant, Option<crate::backend::Sensors>)>>,
    /// Open console sessions, one per domain.
    consoles: console::Sessions,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

fn io_err(what: &str, e: std::io::Error) -> VirError {
    VirError::operation_failed(&format!("{what}: {e}"))
}

/// Parses domain XML into a definition, mapping errors to `VIR_ERR_XML_ERROR`.
pub fn parse_def(xml: &str) -> VirResult<DomainDef> {
    DomainDef::parse(xml).map_err(|e| VirError::xml(&e.to_string()))
}

impl Driver {
    /// Builds the driver over the given nodes, loading definitions and live state from disk
    /// and recovering interrupted operations. Call [`Driver::start_background`] afterwards.
    pub async fn open(cfg: Config, nodes: Vec<Node>) -> Result<Arc<Driver>, String> {
        let store = Store::open(&cfg.config_dir, &cfg.state_dir)
            .map_err(|e| format!("cannot prepare directories: {e}"))?;
        let hostname = cfg.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
        let history = store.load_node_history();
        let secrets = Arc::new(
            Secrets::open(&cfg.config_dir).map_err(|e| format!("cannot load secrets: {e}"))?,
        );
        let schema = crate::domain::schema::install(&cfg.state_dir)
            .map_err(|e| format!("cannot install the domain schema: {e}"))?;
        let node_index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.spec.name.clone(), i))
            .collect();
        let d = Arc::new(Driver {
            cfg,
            store,
            reg: RwLock::new(Registry::default()),
            placement: Mutex::new(placement::Placement::new(&nodes, &node_index, history)),
            history_written: tokio::sync::Mutex::new(0),
            nodes,
            node_index,
            next_id: AtomicI32::new(1),
            events: EventBus::new(),
            hostname,
            secrets,
            schema,
            watch: Mutex::new(HashMap::new()),
            sensors: Mutex::new(HashMap::new()),
            consoles: Default::default(),
        });
        d.load().await?;
        Ok(d)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The host name reported to clients.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// How long an operation waits for the job of its domain.
    pub(crate) fn job_wait(&self) -> std::time::Duration {
        self.cfg.job_wait()
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(*self.node_index.get(name)?)
    }

    fn emit(&self, r: &DomRef, kind: EventKind) {
        self.events.publish(DomainEvent {
            name: r.name.clone(),
            uuid: r.uuid,
            id: r.id,
            kind,
        });
    }

    fn emit_lifecycle(&self, r: &DomRef, event: i32, detail: i32) {
        self.emit(r, EventKind::Lifecycle { event, detail });
    }

    /// Emits the events a lifecycle transition returned, in order.
    fn emit_all(&self, r: &DomRef, events: &[state::Event]) {
        for &(event, detail) in events {
            self.emit_lifecycle(r, event, detail);
        }
    }

    // ---------------------------------------------------------------- lookups

    /// Finds by uuid.
    pub fn lookup_uuid(&self, uuid: &Uuid) -> VirResult<Arc<DomainObj>> {
        self.reg
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_uuid
            .get(uuid)
            .cloned()
            .ok_or_else(|| VirError::no_domain_uuid(uuid, None))
    }

    /// Finds the object a client handle refers to (by uuid, like libvirt's drivers).
    pub fn get(&self, uuid: &Uuid, name: &str) -> VirResult<Arc<DomainObj>> {
        self.lookup_uuid(uuid)
            .map_err(|_| VirError::no_domain_uuid(uuid, Some(name)))
    }

    /// Finds by name.
    pub fn lookup_name(&self, name: &str) -> VirResult<Arc<DomainObj>> {
        let reg = self.reg.read().unwrap_or_else(|e| e.into_inner());
        reg.by_name
            .get(name)
            .and_then(|u| reg.by_uuid.get(u))
            .cloned()
            .ok_or_else(|| VirError::no_domain_name(name))
    }

    /// Finds an active domain by id.
    pub fn lookup_id(&self, id: i32) -> VirResult<Arc<DomainObj>> {
        let reg = self.reg.read().unwrap_or_else(|e| e.into_inner());
        reg.by_id
            .get(&id)
            .and_then(|u| reg.by_uuid.get(u))
            .cloned()
            .ok_or_else(|| VirError::no_domain_id(id))
    }

    /// Writes every acknowledged definition and status change to its file (the commit logs
    /// hold them durably until then): at shutdown, so a stopped daemon's directories are
    /// complete for an operator.
    pub async fn flush(&self) -> std::io::Result<()> {
        self.store.flush().await
    }

    /// Every domain, in no particular order.
    pub fn all(&self) -> Vec<Arc<DomainObj>> {
        self.reg
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_uuid
            .values()
            .cloned()
            .collect()
    }

    /// `virConnectListAllDomains` filtering (groups OR-ed within, AND-ed across).
    pub fn list_all(&self, flags: u32) -> VirResult<Vec<DomRef>> {
        VirError::check_flags(flags, 0xffff, "virConnectListAllDomains")?;
        // One pass under the registry's read lock, one short lock per domain: no list of
        // handles first (10,000 domains per call at fleet scale).
        let reg = self.reg.read().unwrap_or_else(|e| e.into_inner());
        Ok(reg
            .by_uuid
            .values()
            .filter_map(|obj| obj.with(|s| Self::list_filter(s, flags).then(|| obj.dom_ref_of(s))))
            .collect())
    }

    /// Whether a domain passes the `virConnectListAllDomains` filter `flags` (also the
    /// filter bits of `virConnectGetAllDomainStats`).
    fn list_filter(s: &DomState, flags: u32) -> bool {
        const ACTIVE: u32 = 1;
        const INACTIVE: u32 = 2;
        const PERSISTENT: u32 = 4;
        const TRANSIENT: u32 = 8;
        const RUNNING: u32 = 16;
        const PAUSED: u32 = 32;
        const SHUTOFF: u32 = 64;
        const OTHER: u32 = 128;
        const MANAGEDSAVE: u32 = 256;
        const NO_MANAGEDSAVE: u32 = 512;
        const AUTOSTART: u32 = 1024;
        const NO_AUTOSTART: u32 = 2048;
        const HAS_SNAPSHOT: u32 = 4096;
        const NO_SNAPSHOT: u32 = 8192;
        const HAS_CHECKPOINT: u32 = 16384;
        const NO_CHECKPOINT: u32 = 32768;
        // Bare metal has no managed save, snapshots or checkpoints: "has" matches nothing,
        // "has no" matches everything.
        let absent = |has: u32, has_no: u32| flags & (has | has_no) == 0 || flags & has_no != 0;
        let active = s.active();
        let code = s.state().code();
        let other = !matches!(code, st::RUNNING | st::PAUSED | st::SHUTOFF);
        let g_active = flags & (ACTIVE | INACTIVE) == 0
            || (flags & ACTIVE != 0 && active)
            || (flags & INACTIVE != 0 && !active);
        let g_pers = flags & (PERSISTENT | TRANSIENT) == 0
            || (flags & PERSISTENT != 0 && s.persistent)
            || (flags & TRANSIENT != 0 && !s.persistent);
        let g_state = flags & (RUNNING | PAUSED | SHUTOFF | OTHER) == 0
            || (flags & RUNNING != 0 && code == st::RUNNING)
            || (flags & PAUSED != 0 && code == st::PAUSED)
            || (flags & SHUTOFF != 0 && code == st::SHUTOFF)
            || (flags & OTHER != 0 && other);
        let g_ms = absent(MANAGEDSAVE, NO_MANAGEDSAVE);
        let g_auto = flags & (AUTOSTART | NO_AUTOSTART) == 0
            || (flags & AUTOSTART != 0 && s.autostart)
            || (flags & NO_AUTOSTART != 0 && !s.autostart);
        let g_snap = absent(HAS_SNAPSHOT, NO_SNAPSHOT);
        let g_ckpt = absent(HAS_CHECKPOINT, NO_CHECKPOINT);
        g_active && g_pers && g_state && g_ms && g_auto && g_snap && g_ckpt
    }

    /// Ids of active domains (legacy `virConnectListDomains`).
    pub fn active_ids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .reg
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Names of inactive domains (legacy `virConnectListDefinedDomains`).
    pub fn inactive_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .all()
            .iter()
            .filter_map(|o| o.with(|s| (!s.active()).then(|| s.def.name().to_string())))
            .collect();
        v.sort();
        v
    }

    // ---------------------------------------------------------------- reads

    /// `virDomainGetXMLDesc`.
    pub fn xml_desc(&self, obj: &DomainObj, flags: u32) -> VirResult<String> {
        const SECURE: u32 = 1;
        const INACTIVE: u32 = 2;
        const UPDATE_CPU: u32 = 4;
        const MIGRATABLE: u32 = 8;
        VirError::check_flags(
            flags,
            SECURE | INACTIVE | UPDATE_CPU | MIGRATABLE,
            "virDomainGetXMLDesc",
        )?;
        let secure = flags & SECURE != 0;
        let (def, live) = obj.with(|s| {
            if flags & (INACTIVE | MIGRATABLE) != 0 || !s.active() {
                (s.persistent_def().clone(), None)
            } else {
                (s.def.clone(), s.live_xml.clone())
            }
        });
        match live {
            None => Ok(def.inactive_xml(secure)?.into_owned()),
            Some(l) => Ok(l.get(secure).to_string()),
        }
    }

    /// Picks the definition a metadata or config read applies to
    /// (`VIR_DOMAIN_AFFECT_CURRENT/LIVE/CONFIG`).
    pub fn def_for(&self, obj: &DomainObj, flags: u32) -> VirResult<Arc<StoredDef>> {
        const LIVE: u32 = 1;
        const CONFIG: u32 = 2;
        obj.with(|s| {
            if flags & LIVE != 0 && flags & CONFIG != 0 {
                return Err(VirError::invalid_arg(
                    "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive",
                ));
            }
            if flags & LIVE != 0 && !s.active() {
                return Err(VirError::operation_invalid("domain is not running"));
            }
            if flags & CONFIG != 0 {
                if !s.persistent {
                    return Err(VirError::operation_invalid(
                        "transient domains do not have any persistent config",
                    ));
                }
                return Ok(s.persistent_def().clone());
            }
            Ok(s.def.clone())
        })
    }

    // ---------------------------------------------------------------- registry changes

    /// Inserts unless the uuid or the name is taken (atomically, under the write lock).
    fn try_insert(&self, obj: &Arc<DomainObj>, name: &str) -> bool {
        let mut reg = self.reg.write().unwrap_or_else(|e| e.into_inner());
        if reg.by_uuid.contains_key(&obj.uuid) || reg.by_name.contains_key(name) {
            return false;
        }
        reg.by_name.insert(name.to_string(), obj.uuid);
        reg.by_uuid.insert(obj.uuid, obj.clone());
        true
    }

    fn insert(&self, obj: Arc<DomainObj>, name: &str) {
        let mut reg = self.reg.write().unwrap_or_else(|e| e.into_inner());
        reg.by_name.insert(name.to_string(), obj.uuid);
        reg.by_uuid.insert(obj.uuid, obj);
    }

    fn remove(&self, obj: &DomainObj) {
        let mut reg = self.reg.write().unwrap_or_else(|e| e.into_inner());
        let name = obj.with(|s| {
            s.removed = true;
            s.def.name().to_string()
        });
        if reg.by_name.get(&name) == Some(&obj.uuid) {
            reg.by_name.remove(&name);
        }
        reg.by_uuid.remove(&obj.uuid);
        reg.by_id.retain(|_, u| *u != obj.uuid);
    }

    fn set_id(&self, obj: &DomainObj, old: i32, new: i32) {
        let mut reg = self.reg.write().unwrap_or_else(|e| e.into_inner());
        if old > 0 {
            reg.by_id.remove(&old);
        }
        if new > 0 {
            reg.by_id.insert(new, obj.uuid);
        }
    }

    fn fresh_id(&self) -> i32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// libvirt's uniqueness rules (`virDomainObjListAddLocked`). Returns the existing object
    /// with this uuid, if any.
    fn check_unique(&self, def: &StoredDef, check_live: bool) -> VirResult<Option<Arc<DomainObj>>> {
        let reg = self.reg.read().unwrap_or_else(|e| e.into_inner());
        let uuid = def.uuid();
        if let Some(obj) = reg.by_uuid.get(&uuid) {
            let (old_name, active, persistent) =
                obj.with(|s| (s.def.name().to_string(), s.active(), s.persistent));
            if old_name != def.name() {
                return Err(VirError::operation_failed(&format!(
                    "domain '{old_name}' is already defined with uuid {uuid}"
                )));
            }
            if check_live {
                if active {
                    return Err(VirError::operation_invalid(&format!(
                        "domain '{old_name}' is already active"
                    )));
                }
                if !persistent {
                    return Err(VirError::operation_invalid(&format!(
                        "domain '{old_name}' is already being started"
                    )));
                }
            }
            return Ok(Some(obj.clone()));
        }
        if let Some(other) = reg.by_name.get(def.name()) {
            return Err(VirError::operation_failed(&format!(
                "domain '{}' already exists with uuid {other}",
                def.name()
            )));
        }
        Ok(None)
    }

    // ---------------------------------------------------------------- define / undefine

    /// `virDomainDefineXML(Flags)`.
    pub async fn define_xml(&self, xml: &str, flags: u32) -> VirResult<DomRef> {
        VirError::check_flags(flags, 1, "virDomainDefineXMLFlags")?;
        if flags & 1 != 0 {
            crate::domain::schema::validate(&self.schema, xml)
                .map_err(|e| VirError::schema_invalid(&e.to_string()))?;
        }
        let def = StoredDef::parse_xml(xml)?;
        plan::check_devices(&def.tree()?)?;
        loop {
            match self.check_unique(&def, false)? {
                None => {
                    // Reserve the name and uuid first (a concurrent define of the same name
                    // must not win the file), then make it durable; undo on failure.
                    let obj = DomainObj::new(def.uuid(), DomState::new(def.clone(), true));
                    if !self.try_insert(&obj, def.name()) {
                        continue;
                    }
                    let job = obj.begin_job("virDomainDefineXML", self.job_wait()).await?;
                    if let Err(e) = self
                        .store
                        .save_config(def.name(), def.config_xml_shared())
                        .await
                    {
                        self.remove(&obj);
                        return Err(io_err("cannot save domain definition", e));
                    }
                    drop(job);
                    crate::crash::point("define:acked");
                    let r = obj.dom_ref();
                    self.emit_lifecycle(
                        &r,
                        crate::events::lifecycle::DEFINED,
                        crate::events::lifecycle::DEFINED_ADDED,
                    );
                    return Ok(r);
                }
                Some(obj) => {
                    let _job = obj.begin_job("virDomainDefineXML", self.job_wait()).await?;
                    if obj.with(|s| s.removed) {
                        continue;
                    }
                    self.store
                        .save_config(def.name(), def.config_xml_shared())
                        .await
                        .map_err(|e| io_err("cannot save domain definition", e))?;
                    let r = obj.with(|s| {
                        if s.active() {
                            s.new_def = Some(def.clone());
                            s.updated = true;
                        } else {
                            s.def = def.clone();
                        }
                        s.persistent = true;
                        DomRef {
                            name: s.def.name().to_string(),
                            uuid: obj.uuid,
                            id: s.id,
                        }
                    });
                    if obj.with(|s| s.active()) {
                        self.persist_active(&obj).await?;
                    }
                    self.emit_lifecycle(
                        &r,
                        crate::events::lifecycle::DEFINED,
                        crate::events::lifecycle::DEFINED_UPDATED,
                    );
                    return Ok(r);
                }
            }
        }
    }

    /// `virDomainUndefine(Flags)`.
    pub async fn undefine(&self, obj: &Arc<DomainObj>, flags: u32) -> VirResult<()> {
        // MANAGED_SAVE, SNAPSHOTS_METADATA, NVRAM, KEEP_NVRAM, CHECKPOINTS_METADATA, TPM,
        // KEEP_TPM: nothing of that exists for bare metal, so they are accepted and no-ops.
        VirError::check_flags(flags, 0x7f, "virDomainUndefineFlags")?;
        if flags & 4 != 0 && flags & 8 != 0 {
            return Err(VirError::operation_invalid(
                "cannot both keep and delete nvram",
            ));
        }
        let _job = obj.begin_job("virDomainUndefine", self.job_wait()).await?;
        let (r, active, persistent, name) = obj.with(|s| {
            (
                DomRef {
                    name: s.def.name().to_string(),
                    uuid: obj.uuid,
                    id: s.id,
                },
                s.active(),
                s.persistent,
                s.def.name().to_string(),
            )
        });
        if obj.with(|s| s.removed) {
            return Err(VirError::no_domain_uuid(&obj.uuid, Some(&name)));
        }
        if !persistent {
            return Err(VirError::operation_invalid(
                "cannot undefine transient domain",
            ));
        }
        self.store
            .delete_config(&name)
            .await
            .map_err(|e| io_err("cannot delete domain definition", e))?;
        if active {
            obj.with(|s| {
                s.persistent = false;
                s.autostart = false;
                s.new_def = None;
            });
            self.persist_active(obj).await?;
        } else {
            self.remove(obj);
        }
        self.emit_lifecycle(
            &r,
            crate::events::lifecycle::UNDEFINED,
            crate::events::lifecycle::UNDEFINED_REMOVED,
        );
        Ok(())
    }

    /// `virDomainSetAutostart`.
    pub async fn set_autostart(&self, obj: &Arc<DomainObj>, on: bool) -> VirResult<()> {
        let _job = obj
            .begin_job("virDomainSetAutostart", self.job_wait())
            .await?;
        let (persistent, name, cur) =
            obj.with(|s| (s.persistent, s.def.name().to_string(), s.autostart));
        if !persistent {
            return Err(VirError::operation_invalid(
                "cannot set autostart for transient domain",
            ));
        }
        if cur != on {
            self.store
                .set_autostart(&name, on)
                .await
                .map_err(|e| io_err("cannot change autostart", e))?;
            obj.with(|s| s.autostart = on);
        }
        Ok(())
    }

    /// `virDomainSetMetadata`.
    pub async fn set_metadata(
        &self,
        obj: &Arc<DomainObj>,
        kind: i32,
        value: Option<&str>,
        key: Option<&str>,
        uri: Option<&str>,
        flags: u32,
    ) -> VirResult<()> {
        const LIVE: u32 = 1;
        const CONFIG: u32 = 2;
        VirError::check_flags(flags, LIVE | CONFIG, "virDomainSetMetadata")?;
        let _job = obj
            .begin_job("virDomainSetMetadata", self.job_wait())
            .await?;
        let (live, config) = Self::modification_impact(obj, flags)?;
        let active = obj.with(|s| s.active());
        let api = VirError::api_arg;
        match kind {
            0 | 1 if key.is_some() => return Err(api("key in virDomainSetMetadata must be NULL")),
            0 | 1 if uri.is_some() => return Err(api("uri in virDomainSetMetadata must be NULL")),
            1 if value.is_some_and(|v| v.contains('\n')) => {
                return Err(api("metadata title can't contain newlines"))
            }
            2 if uri.is_none() => return Err(api("uri in virDomainSetMetadata must not be NULL")),
            2 if value.is_some() && key.is_none() => {
                return Err(api("key in virDomainSetMetadata must not be NULL"))
            }
            _ => {}
        }
        let apply = |d: &StoredDef| -> VirResult<Arc<StoredDef>> {
            let mut d: DomainDef = d.tree()?;
            match kind {
                0 => d
                    .set_description(value.filter(|v| !v.is_empty()))
                    .map_err(|e| VirError::xml(&e.to_string()))?,
                1 => d
                    .set_title(value.filter(|v| !v.is_empty()))
                    .map_err(|e| VirError::xml(&e.to_string()))?,
                2 => d
                    .set_metadata_element(uri.unwrap_or(""), key.unwrap_or(""), value)
                    .map_err(|e| VirError::xml(&e.to_string()))?,
                k => return Err(VirError::unknown_metadata_type(k)),
            }
            StoredDef::checked(&d)
        };
        let (cur, pers, info) =
            obj.with(|s| (s.def.clone(), s.persistent_def().clone(), s.live_info()));
        let new_live = match (live, info) {
            (true, Some(info)) => {
                let d = apply(&cur)?;
                let x = Arc::new(d.live_xml(&info)?);
                Some((d, x))
            }
            _ => None,
        };
        let new_config = if config { Some(apply(&pers)?) } else { None };
        if let Some(c) = &new_config {
            self.store
                .save_config(c.name(), c.config_xml_shared())
                .await
                .map_err(|e| io_err("cannot save domain definition", e))?;
        }
        obj.with(|s| {
            if let Some((d, x)) = new_live {
                s.set_live_def(d, x);
            }
            if let Some(c) = new_config {
                if s.active() {
                    s.new_def = Some(c);
                } else {
                    s.def = c;
                }
            }
        });
        if active {
            self.persist_active(obj).await?;
        }
        Ok(())
    }

    /// `virDomainObjUpdateModificationImpact`: which definitions a change with
    /// `VIR_DOMAIN_AFFECT_CURRENT` (0), `LIVE` (1) and/or `CONFIG` (2) applies to.
    pub(crate) fn modification_impact(obj: &DomainObj, flags: u32) -> VirResult<(bool, bool)> {
        let (active, persistent, removed, name) = obj.with(|s| {
            (
                s.active(),
                s.persistent,
                s.removed,
                s.def.name().to_string(),
            )
        });
        if removed {
            return Err(VirError::no_domain_uuid(&obj.uuid, Some(&name)));
        }
        let (live, config) = match flags & 3 {
            0 => (active, !active),
            f => (f & 1 != 0, f & 2 != 0),
        };
        if live && !active {
            return Err(VirError::operation_invalid("domain is not running"));
        }
        if config && !persistent {
            return Err(VirError::operation_invalid(
                "transient domains do not have any persistent config",
            ));
        }
        Ok((live, config))
    }

    /// Makes a new persistent definition durable and current.
    async fn commit_config(&self, obj: &DomainObj, def: Arc<StoredDef>) -> VirResult<()> {
        self.store
            .save_config(def.name(), def.config_xml_shared())
            .await
            .map_err(|e| io_err("cannot save domain definition", e))?;
        let active = obj.with(|s| {
            if s.active() {
                s.new_def = Some(def);
            } else {
                s.def = def;
            }
            s.active()
        });
        if active {
            self.persist_active(obj).await?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- status persistence

    /// Writes the live status of an active domain, durably (fsync) before it returns.
    async fn persist_active(&self, obj: &DomainObj) -> VirResult<()> {
        self.persist_status(obj, store::Phase::Active, None).await
    }

    /// Writes a domain's live status in the given phase, durably before it returns. A failure
    /// is logged and returned: a change whose record is not on disk must not be reported
    /// done (a restart would act on the old record).
    async fn persist_status(
        &self,
        obj: &DomainObj,
        phase: store::Phase,
        stop_reason: Option<i32>,
    ) -> VirResult<()> {
        let status = obj.with(|s| {
            s.node.clone().map(|node| Status {
                uuid: obj.uuid,
                name: s.def.name().to_string(),
                id: s.id,
                state: s.state().code(),
                reason: s.state().reason_code(),
                node,
                phase,
                persistent: s.persistent,
                xml: s.def.config_xml().to_string(),
                journal: s.journal.clone(),
                stop_reason,
            })
        });
        if let Some(st) = status {
            if let Err(e) = self.store.save_status(&st).await {
                tracing::error!(domain = %st.name, "cannot save live status: {e}");
                return Err(VirError::operation_failed(&format!(
                    "cannot save the live status of domain '{}': {e}",
                    st.name
                )));
            }
        }
        Ok(())
    }
}

/// The one map from a backend failure to a libvirt error, in context (`what`: "cannot power
/// on node-1"): the code its kind calls for. Above the backends, so neither they nor
/// `error` know of each other.
pub(crate) fn backend_error(what: &str, e: &crate::backend::BackendError) -> VirError {
    use crate::backend::ErrorKind;
    let detail = format!("{what}: {e}");
    match e.kind {
        ErrorKind::Auth => VirError::auth_failed(&detail),
        ErrorKind::Timeout => VirError::operation_timeout(&detail),
        ErrorKind::Unsupported => VirError::operation_unsupported(&detail),
        ErrorKind::Failed | ErrorKind::Unreachable => VirError::operation_failed(&detail),
    }
}

#[cfg(test)]
mod tests;
