//! Where the driver keeps things on disk (DESIGN §5):
//!
//! - `<config_dir>/domains/<name>.xml` — persistent definitions (inactive XML)
//! - `<config_dir>/autostart/<name>` — autostart markers
//! - `<state_dir>/domains/<uuid>.json` — live status of active or half-started domains:
//!   node binding, id, state, the live XML and the undo journal
//! - `<config_dir>/domains.log`, `<state_dir>/domains.log` — the group-commit logs of the
//!   two directories above (`commitlog`): a change is durable there first
//! - `<state_dir>/nodes.json` — last domain bound to each node (sticky placement)

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commitlog::{CommitLog, Recovered};
use crate::persist;

/// A hardware step of a start, recorded before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// A disk mapping (undo: detach).
    Disk {
        /// Backend handle.
        handle: String,
        /// Target dev.
        target: String,
        /// Host-visible device once mapped.
        device: Option<String>,
        /// Position on the host's disk controller (1 = the boot disk), kept so a disk
        /// mapped again after a crash comes back at the same place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<u32>,
    },
    /// A NIC plug (undo: unplug).
    Nic {
        /// Backend handle.
        handle: String,
        /// MAC address.
        mac: String,
        /// Representor once plugged.
        representor: Option<String>,
    },
    /// Power on (undo: hard power off).
    PowerOn,
}

impl Step {
    /// The backend handle of a disk or NIC step.
    pub fn handle(&self) -> Option<&str> {
        match self {
            Step::Disk { handle, .. } | Step::Nic { handle, .. } => Some(handle),
            Step::PowerOn => None,
        }
    }
}

/// Where a domain's hardware is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Start in progress: on recovery, undo the journal.
    Starting,
    /// Running or staged.
    Active,
    /// Stop in progress: on recovery, finish it.
    Stopping,
}

/// `<state_dir>/domains/<uuid>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Domain uuid.
    pub uuid: Uuid,
    /// Domain name.
    pub name: String,
    /// Domain id.
    pub id: i32,
    /// `virDomainState`.
    pub state: i32,
    /// Reason.
    pub reason: i32,
    /// Bound node.
    pub node: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Persistent (has a config file).
    pub persistent: bool,
    /// The live definition (inactive-format XML).
    pub xml: String,
    /// Undo journal, in execution order.
    pub journal: Vec<Step>,
    /// Reason to use if a stop must be finished during recovery.
    #[serde(default)]
    pub stop_reason: Option<i32>,
}

/// A live status file as found at start-up.
#[derive(Debug)]
pub enum Found {
    /// A readable status.
    Status(Status),
    /// A status that cannot be read or parsed: its domain is quarantined.
    Unreadable {
        /// From the file name, when it is one.
        uuid: Option<Uuid>,
        /// Why.
        why: String,
    },
    /// A status an operator released (`<uuid>.json.release`).
    Released {
        /// From the file name, when it is one.
        uuid: Option<Uuid>,
        /// The status, or why it cannot be read.
        read: Result<Status, String>,
        /// The file, removed once handled.
        path: PathBuf,
    },
}

/// Paths and file operations.
#[derive(Debug, Clone)]
pub struct Store {
    config_dir: PathBuf,
    state_dir: PathBuf,
    /// Group-committed definition writes (see `commitlog`).
    deflog: CommitLog,
    /// Group-committed status writes.
    status_log: CommitLog,
    /// What each log held at open, read over the directories by the start-up loaders
    /// (taken by them: the committers write it to the files in the background).
    recovered: Arc<std::sync::Mutex<(Option<Recovered>, Option<Recovered>)>>,
}

impl Store {
    /// Creates the directory layout and recovers both commit logs into their files.
    pub fn open(config_dir: &Path, state_dir: &Path) -> io::Result<Store> {
        let (domains, status) = (config_dir.join("domains"), state_dir.join("domains"));
        persist::ensure_dir(&domains, 0o755)?;
        persist::ensure_dir(&config_dir.join("autostart"), 0o755)?;
        persist::ensure_dir(&status, 0o700)?;
        for d in [&domains, &config_dir.join("autostart"), &status, state_dir] {
            persist::clean_temp_files(d)?;
        }
        let (deflog, defs) = CommitLog::open(&domains, "xml", &config_dir.join("domains.log"))?;
        let (status_log, statuses) =
            CommitLog::open(&status, "json", &state_dir.join("domains.log"))?;
        Ok(Store {
            config_dir: config_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            deflog,
            status_log,
            recovered: Arc::new(std::sync::Mutex::new((Some(defs), Some(statuses)))),
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn domains_dir(&self) -> PathBuf {
        self.config_dir.join("domains")
    }

    fn autostart_dir(&self) -> PathBuf {
        self.config_dir.join("autostart")
    }

    fn status_dir(&self) -> PathBuf {
        self.state_dir.join("domains")
    }

    /// Runs file I/O on the blocking pool: fsync must never stall the async workers (reads
    /// would wait behind it), and concurrent fsyncs there are coalesced by the filesystem.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
    }

    /// Saves a persistent definition (durable when this returns).
    pub async fn save_config(&self, name: &str, xml: std::sync::Arc<str>) -> io::Result<()> {
        self.deflog.put(name, xml).await
    }

    /// Deletes a persistent definition and its autostart marker.
    pub async fn delete_config(&self, name: &str) -> io::Result<()> {
        self.deflog.delete(name).await?;
        let a = self.autostart_dir().join(name);
        if a.exists() {
            Self::blocking(move || persist::remove(&a)).await?;
        }
        Ok(())
    }

    /// Sets or clears the autostart marker.
    pub async fn set_autostart(&self, name: &str, on: bool) -> io::Result<()> {
        let p = self.autostart_dir().join(name);
        Self::blocking(move || {
            if on {
                persist::write_atomic(&p, b"", 0o644)
            } else {
                persist::remove(&p)
            }
        })
        .await
    }

    /// What the definition log (`defs`) or the status log held at open, once: the
    /// start-up loaders read it over the directories.
    fn take_recovered(&self, defs: bool) -> Recovered {
        let mut r = self.recovered.lock().unwrap_or_else(|e| e.into_inner());
        let slot = if defs { &mut r.0 } else { &mut r.1 };
        slot.take().unwrap_or_default()
    }

    /// All saved definitions: (file name stem, xml, autostart). For start-up: the
    /// definition log's recovered changes are read over the files.
    pub fn load_configs(&self) -> io::Result<Vec<(String, String, bool)>> {
        let mut recovered = self.take_recovered(true);
        let mut out = Vec::new();
        for ent in std::fs::read_dir(self.domains_dir())? {
            let p = ent?.path();
            if p.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let xml = match recovered.remove(&stem) {
                Some(Some(newer)) => newer.to_string(),
                Some(None) => continue,
                None => std::fs::read_to_string(&p)?,
            };
            let auto = self.autostart_dir().join(&stem).exists();
            out.push((stem, xml, auto));
        }
        for (stem, xml) in recovered {
            if let Some(xml) = xml {
                let auto = self.autostart_dir().join(&stem).exists();
                out.push((stem, xml.to_string(), auto));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes every acknowledged definition and status to its file (at shutdown).
    pub async fn flush(&self) -> io::Result<()> {
        self.deflog.flush().await?;
        self.status_log.flush().await
    }

    /// Saves a live status (durable when this returns; group-committed with other writes,
    /// in its file `<uuid>.json` a moment later).
    pub async fn save_status(&self, s: &Status) -> io::Result<()> {
        let data = serde_json::to_string_pretty(s).map_err(io::Error::other)?;
        self.status_log.put(&s.uuid.to_string(), data.into()).await
    }

    /// Deletes a live status (durable when this returns).
    pub async fn delete_status(&self, uuid: &Uuid) -> io::Result<()> {
        self.status_log.delete(&uuid.to_string()).await
    }

    /// All live statuses: each readable one, or why it cannot be read (with the domain's
    /// uuid from the file name). `<uuid>.json.release` files (an operator releasing a
    /// quarantined domain, see docs/RELIABILITY.md) come back as [`Found::Released`].
    pub fn load_statuses(&self) -> io::Result<Vec<Found>> {
        let mut recovered = self.take_recovered(false);
        let mut out = Vec::new();
        for ent in std::fs::read_dir(self.status_dir())? {
            let p = ent?.path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            let (stem, released) = if let Some(s) = name.strip_suffix(".json.release") {
                (s, true)
            } else if let Some(s) = name.strip_suffix(".json") {
                (s, false)
            } else {
                continue;
            };
            let uuid = Uuid::parse_str(stem).ok();
            // The status log's newer content (or deletion) wins over the file; an operator's
            // release wins over both.
            let newer = recovered.remove(stem).filter(|_| !released);
            let read = match newer {
                Some(None) => continue,
                Some(Some(text)) => Ok(text.as_bytes().to_vec()),
                None => std::fs::read(&p).map_err(|e| e.to_string()),
            }
            .and_then(|b| serde_json::from_slice::<Status>(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", p.display()));
            out.push(if released {
                Found::Released {
                    uuid,
                    read,
                    path: p,
                }
            } else {
                match read {
                    Ok(s) => Found::Status(s),
                    Err(why) => Found::Unreadable { uuid, why },
                }
            });
        }
        for (stem, text) in recovered {
            let Some(text) = text else { continue };
            let uuid = Uuid::parse_str(&stem).ok();
            out.push(match serde_json::from_str::<Status>(&text) {
                Ok(s) => Found::Status(s),
                Err(e) => Found::Unreadable {
                    uuid,
                    why: format!("{stem} in the status log: {e}"),
                },
            });
        }
        Ok(out)
    }

    /// Removes a released status file.
    pub fn remove_file(&self, p: &Path) -> io::Result<()> {
        persist::remove(p)
    }

    /// Sticky placement: node name → last domain uuid bound to it.
    pub fn load_node_history(&self) -> BTreeMap<String, Uuid> {
        std::fs::read(self.state_dir.join("nodes.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the placement history (on the blocking pool: it is the size of the lab).
    pub async fn save_node_history(&self, h: BTreeMap<String, Uuid>) -> io::Result<()> {
        let p = self.state_dir.join("nodes.json");
        Self::blocking(move || {
            let data = serde_json::to_vec(&h).map_err(io::Error::other)?;
            persist::write_atomic(&p, &data, 0o600)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash left changes in both logs: the loaders read them over the files; an
    /// operator's release wins over a status the log still held.
    #[test]
    fn loaders_read_the_logs_over_the_files_and_a_release_wins() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, state) = (d.path().join("etc"), d.path().join("state"));
        for dir in [cfg.join("domains"), state.join("domains")] {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(cfg.join("domains/old.xml"), "<old/>").unwrap();
        std::fs::write(cfg.join("domains/gone.xml"), "<gone/>").unwrap();
        std::fs::write(
            cfg.join("domains.log"),
            "{\"name\":\"old\",\"xml\":\"<new/>\"}\n{\"name\":\"gone\",\"xml\":null}\n{\"name\":\"fresh\",\"xml\":\"<fresh/>\"}\n",
        )
        .unwrap();
        let (released, logged) = (Uuid::new_v4(), Uuid::new_v4());
        std::fs::write(state.join(format!("domains/{released}.json.release")), "x").unwrap();
        std::fs::write(
            state.join("domains.log"),
            format!("{{\"name\":\"{released}\",\"xml\":\"{{}}\"}}\n{{\"name\":\"{logged}\",\"xml\":\"not json\"}}\n"),
        )
        .unwrap();
        let store = Store::open(&cfg, &state).unwrap();
        let configs: Vec<(String, String)> = store
            .load_configs()
            .unwrap()
            .into_iter()
            .map(|(n, x, _)| (n, x))
            .collect();
        assert_eq!(
            configs,
            [
                ("fresh".to_string(), "<fresh/>".to_string()),
                ("old".to_string(), "<new/>".to_string())
            ]
        );
        let found = store.load_statuses().unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found
            .iter()
            .any(|f| matches!(f, Found::Released { uuid, .. } if *uuid == Some(released))));
        assert!(found
            .iter()
            .any(|f| matches!(f, Found::Unreadable { uuid, .. } if *uuid == Some(logged))));
    }
}
