//! The simulated lab: SIMULATION ONLY. Nodes whose BMC, disk mapping and NIC plumbing live in
//! this process, with configurable latencies and injectable failures. It exists for trying
//! metalvirt and for fast tests; it proves nothing about real hardware.
//!
//! The simulated hardware state is written after every change, so it survives daemon
//! restarts like real servers do, and tests can see what is mapped, plugged and powered:
//! `<state_dir>/sim-lab/<node>.json` per node (written once the node first changes) and
//! `<state_dir>/sim-lab/volumes.json`. Each node has its own lock and file, so nodes change
//! side by side and a change costs the same with 10 nodes or 10,000.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    BResult, BackendError, BlockInfo, BlockStats, BootDev, BootMode, BootRequest, ConsoleIo,
    DiskSpec, Disks, IfStats, NicSpec, Nics, Node, NodeSpec, Power, PowerReading, PowerState, Qos,
    Sensors, Simulated,
};
use crate::config::SimConfig;

/// Number of NIC functions per simulated node (`pf0vf0`…`pf0vf15`).
pub const NIC_FUNCTIONS: usize = 16;

/// The bridge simulated NICs join (OVN's integration bridge).
pub const BRIDGE: &str = "br-int";

/// The simulated NIC pool: (function, representor) pairs `pf0vfN`, one allocation shared by
/// every node that uses it.
pub fn nic_pool() -> Arc<[(String, String)]> {
    (0..NIC_FUNCTIONS)
        .map(|i| (format!("pf0vf{i}"), format!("pf0vf{i}")))
        .collect()
}

/// Simulated state of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimNodeState {
    /// Power.
    pub power: PowerState,
    /// Boot override.
    pub boot: Option<BootDev>,
    /// The boot override applies to every boot.
    #[serde(default)]
    pub boot_persistent: bool,
    /// Firmware mode of the boot override.
    #[serde(default)]
    pub boot_mode: Option<BootMode>,
    /// Times the server was powered on or restarted.
    pub boots: u64,
    /// Mapped disks by handle.
    pub disks: BTreeMap<String, SimDisk>,
    /// Plugged NICs by handle.
    pub nics: BTreeMap<String, SimNic>,
}

/// A mapped simulated disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimDisk {
    /// What was asked (the key itself is never written here).
    pub spec: DiskSpec,
    /// Host-visible device.
    pub device: String,
    /// Length of the key the disk was mapped with, when it had `<auth>` (proof the secret
    /// reached the DPU without writing it down).
    #[serde(default)]
    pub key_len: Option<usize>,
    /// When it was mapped (Unix ms); the simulated I/O counters grow from here.
    #[serde(default)]
    pub mapped_at_ms: u64,
}

/// A plugged simulated NIC function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimNic {
    /// What was asked.
    pub spec: NicSpec,
    /// Representor name.
    pub representor: String,
    /// When it was plugged (Unix ms); the simulated traffic counters grow from here.
    #[serde(default)]
    pub plugged_at_ms: u64,
}

/// The single file of earlier versions (every node and the volumes), read once and
/// replaced by the per-node files.
#[derive(Debug, Default, Deserialize)]
struct OldLabState {
    nodes: BTreeMap<String, SimNodeState>,
    #[serde(default)]
    volumes: BTreeMap<String, u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since `t` (Unix ms), at least 1 so counters of a fresh device are not all zero.
fn secs_since(t: u64) -> i64 {
    (now_ms().saturating_sub(t) / 1000).max(1) as i64
}

struct Shared {
    cfg: SimConfig,
    /// `<state_dir>/sim-lab`.
    dir: PathBuf,
    nodes: HashMap<String, Mutex<SimNodeState>>,
    /// Size of every simulated cloud volume that was ever resized, by source, in bytes.
    volumes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn node(&self, node: &str) -> BResult<&Mutex<SimNodeState>> {
        self.nodes
            .get(node)
            .ok_or_else(|| BackendError::new(format!("simulated node {node} is gone")))
    }

    /// Changes a node's state and writes its file.
    fn with<T>(&self, node: &str, f: impl FnOnce(&mut SimNodeState) -> BResult<T>) -> BResult<T> {
        let mut n = self.node(node)?.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut n)?;
        // Written under the lock: the file always reflects the latest state.
        self.save(&format!("{node}.json"), &*n)?;
        Ok(r)
    }

    /// Reads a node's state (nothing is written: reads are the common case, e.g. the
    /// power watcher's).
    fn read<T>(&self, node: &str, f: impl FnOnce(&SimNodeState) -> BResult<T>) -> BResult<T> {
        let n = self.node(node)?.lock().unwrap_or_else(|e| e.into_inner());
        f(&n)
    }

    /// Reads a node's state and the volume sizes.
    fn read_lab<T>(
        &self,
        node: &str,
        f: impl FnOnce(&SimNodeState, &BTreeMap<String, u64>) -> BResult<T>,
    ) -> BResult<T> {
        let n = self.node(node)?.lock().unwrap_or_else(|e| e.into_inner());
        let volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        f(&n, &volumes)
    }

    /// Changes the volume sizes (with the node's state at hand) and writes them.
    fn with_volumes<T>(
        &self,
        node: &str,
        f: impl FnOnce(&SimNodeState, &mut BTreeMap<String, u64>) -> BResult<T>,
    ) -> BResult<T> {
        let n = self.node(node)?.lock().unwrap_or_else(|e| e.into_inner());
        let mut volumes = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&n, &mut volumes)?;
        self.save("volumes.json", &*volumes)?;
        Ok(r)
    }

    /// Rewrites a state file in place, padded with spaces (JSON ignores them) when it
    /// shrinks: no new file per change (creating one costs a new inode; on a journal-less
    /// ext4, 0.8 ms of CPU, which made every start pay milliseconds). Not fsynced: simulated
    /// hardware outlives a killed daemon (the page cache keeps it), and a power cut has no
    /// meaning for it. A reader racing a rewrite may see a mix, and reads again.
    fn save<T: Serialize + ?Sized>(&self, file: &str, v: &T) -> BResult<()> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let mut json = serde_json::to_vec(v).map_err(|e| BackendError::new(e.to_string()))?;
        let path = self.dir.join(file);
        let cant = |e: std::io::Error| {
            BackendError::new(format!(
                "cannot save simulated lab state {}: {e}",
                path.display()
            ))
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(cant)?;
        let old = f.metadata().map_err(cant)?.len() as usize;
        if json.len() < old {
            json.resize(old, b' ');
        }
        f.write_all_at(&json, 0).map_err(cant)
    }

    fn volume_bytes(&self, volumes: &BTreeMap<String, u64>, source: &str) -> u64 {
        volumes
            .get(source)
            .copied()
            .unwrap_or(self.cfg.volume_gib << 30)
    }
}

async fn delay(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One simulated node; implements all three backend traits.
pub struct SimNode {
    name: String,
    shared: Arc<Shared>,
}

/// Builds the simulated hardware of the named nodes, loading its saved state from
/// `state_dir` (state of nodes no longer named is dropped).
pub fn build_named(
    cfg: &SimConfig,
    state_dir: &std::path::Path,
    names: &[String],
) -> Result<Vec<Arc<SimNode>>, String> {
    let dir = state_dir.join("sim-lab");
    crate::persist::ensure_dir(&dir, 0o755)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    fn load<T: serde::de::DeserializeOwned>(p: &std::path::Path) -> Result<T, String> {
        let b = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_slice(&b)
            .map_err(|e| format!("corrupt simulated lab state {}: {e}", p.display()))
    }
    // The single file of earlier versions, if any: its nodes are written out below.
    let old_file = state_dir.join("sim-lab.json");
    let mut old: OldLabState = if old_file.exists() {
        load(&old_file)?
    } else {
        OldLabState::default()
    };
    let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut saved = HashMap::new();
    let mut volumes = std::mem::take(&mut old.volumes);
    for ent in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = ent.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let Some(stem) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        if stem == "volumes" {
            volumes = load(&p)?;
        } else if wanted.contains(stem) {
            saved.insert(stem.to_string(), load::<SimNodeState>(&p)?);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    let mut nodes = HashMap::with_capacity(names.len());
    let mut migrated = Vec::new();
    for n in names {
        let st = match saved.remove(n) {
            Some(st) => st,
            None => match old.nodes.remove(n) {
                Some(st) => {
                    migrated.push(n.clone());
                    st
                }
                None => SimNodeState {
                    power: PowerState::Off,
                    boot: None,
                    boot_persistent: false,
                    boot_mode: None,
                    boots: 0,
                    disks: BTreeMap::new(),
                    nics: BTreeMap::new(),
                },
            },
        };
        nodes.insert(n.clone(), Mutex::new(st));
    }
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        dir,
        nodes,
        volumes: Mutex::new(volumes),
    });
    if old_file.exists() {
        for n in &migrated {
            shared.with(n, |_| Ok(())).map_err(|e| e.to_string())?;
        }
        let v = shared.volumes.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .save("volumes.json", &*v)
            .map_err(|e| e.to_string())?;
        drop(v);
        std::fs::remove_file(&old_file)
            .map_err(|e| format!("cannot remove {}: {e}", old_file.display()))?;
    }
    Ok(names
        .iter()
        .map(|name| {
            Arc::new(SimNode {
                name: name.clone(),
                shared: shared.clone(),
            })
        })
        .collect())
}

/// Builds the default simulated lab: `cfg.nodes` nodes `node-1`… with everything simulated.
pub fn build(cfg: &SimConfig, state_dir: &std::path::Path) -> Result<Vec<Node>, String> {
    let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("node-{i}")).collect();
    let sims = build_named(cfg, state_dir, &names)?;
    let (functions, bridge) = (nic_pool(), Arc::<str>::from(BRIDGE));
    Ok(sims
        .into_iter()
        .zip(names)
        .map(|(sim, name)| Node {
            spec: NodeSpec {
                name,
                sockets: cfg.sockets,
                cores: cfg.cores,
                threads: cfg.threads,
                memory_kib: cfg.memory_mib * 1024,
                mhz: 2400,
                arch: "x86_64".into(),
                cpu_model: "Simulated Xeon (metalvirt sim)".into(),
                simulated: Simulated {
                    power: true,
                    disks: true,
                    nics: true,
                },
                power_on_timeout: Duration::from_secs(120),
                power_off_timeout: Duration::from_secs(120),
                boot_persistent: true,
                bmc_desc: "simulated BMC".into(),
                nic_functions: functions.clone(),
                nic_bridge: bridge.clone(),
            },
            power: sim.clone(),
            disks: sim.clone(),
            nics: sim,
        })
        .collect())
}

#[async_trait]
impl Power for SimNode {
    async fn state(&self) -> BResult<PowerReading> {
        self.shared
            .read(&self.name, |n| Ok(PowerReading::ok(n.power)))
    }

    /// A simulated serial line: a banner and a login prompt, then every keystroke echoed
    /// (a carriage return as a new line), as long as the session lasts.
    async fn console(&self) -> BResult<ConsoleIo> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let powered = self
            .shared
            .read(&self.name, |n| Ok(n.power != PowerState::Off))?;
        let (ours, theirs) = tokio::io::duplex(4096);
        let name = self.name.clone();
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(ours);
            let banner = if powered {
                format!("\r\nmetalvirt simulated serial console of {name}\r\n{name} login: ")
            } else {
                format!("\r\nmetalvirt simulated serial console of {name} (powered off)\r\n")
            };
            if wr.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut echo = Vec::with_capacity(n + 8);
                for &b in &buf[..n] {
                    echo.push(b);
                    if b == b'\r' {
                        echo.push(b'\n');
                    }
                }
                if wr.write_all(&echo).await.is_err() {
                    break;
                }
            }
        });
        let (output, input) = tokio::io::split(theirs);
        Ok(ConsoleIo {
            output: Box::new(output),
            input: Box::new(input),
        })
    }

    /// A plausible server: 90 W plus 1.5 W per hardware thread when on, 9 W of standby when
    /// off; 24 °C inlet air.
    async fn sensors(&self) -> BResult<Sensors> {
        let c = &self.shared.cfg;
        let threads = f64::from(c.sockets * c.cores * c.threads);
        self.shared.read(&self.name, |n| {
            Ok(Sensors {
                power_watts: Some(if n.power == PowerState::Off {
                    9.0
                } else {
                    90.0 + 1.5 * threads
                }),
                inlet_celsius: Some(24.0),
            })
        })
    }

    async fn on(&self) -> BResult<()> {
        if self.shared.cfg.hang_power_on_nodes.contains(&self.name) {
            // A BMC that took the request and never answers.
            return std::future::pending().await;
        }
        delay(self.shared.cfg.power_latency_ms).await;
        if self.shared.cfg.fail_power_on_nodes.contains(&self.name) {
            return Err(BackendError::new(format!(
                "simulated BMC of {} refused power on (injected failure)",
                self.name
            )));
        }
        self.shared.with(&self.name, |n| {
            if n.power == PowerState::Off {
                n.power = PowerState::On;
                n.boots += 1;
            }
            Ok(())
        })
    }

    async fn off(&self, hard: bool) -> BResult<()> {
        if hard {
            delay(self.shared.cfg.power_latency_ms).await;
            return self.shared.with(&self.name, |n| {
                n.power = PowerState::Off;
                Ok(())
            });
        }
        // Graceful: the OS takes a while to go down; the call itself returns at once. The
        // shutdown belongs to the current boot: if the server is forced off and booted again
        // meanwhile, the new OS knows nothing of it.
        let boot = self.shared.read(&self.name, |n| Ok(n.boots))?;
        let shared = self.shared.clone();
        let name = self.name.clone();
        let ms = shared.cfg.graceful_shutdown_ms;
        tokio::spawn(async move {
            delay(ms).await;
            let _ = shared.with(&name, |n| {
                if n.boots == boot {
                    n.power = PowerState::Off;
                }
                Ok(())
            });
        });
        Ok(())
    }

    async fn restart(&self, _hard: bool) -> BResult<()> {
        delay(self.shared.cfg.power_latency_ms).await;
        self.shared.with(&self.name, |n| {
            n.power = PowerState::On;
            n.boots += 1;
            Ok(())
        })
    }

    async fn set_boot(&self, req: &BootRequest) -> BResult<()> {
        self.shared.with(&self.name, |n| {
            n.boot = Some(req.dev);
            n.boot_persistent = req.persistent;
            n.boot_mode = req.mode;
            Ok(())
        })
    }
}

#[async_trait]
impl Disks for SimNode {
    async fn attach(&self, spec: &DiskSpec) -> BResult<String> {
        delay(self.shared.cfg.disk_latency_ms).await;
        if let Some(f) = self
            .shared
            .cfg
            .fail_disk_sources
            .iter()
            .find(|f| spec.source.contains(f.as_str()))
        {
            return Err(BackendError::new(format!(
                "simulated DPU cannot connect volume '{}': injected failure '{f}'",
                spec.source
            )));
        }
        let key_len = match &spec.auth {
            None => None,
            Some(a) => match &a.key {
                Some(k) if !k.expose().is_empty() => Some(k.expose().len()),
                _ => {
                    return Err(BackendError::new(format!(
                        "simulated DPU cannot connect volume '{}': no key for user {}",
                        spec.source,
                        a.username.as_deref().unwrap_or("(none)")
                    )))
                }
            },
        };
        self.shared.with(&self.name, |n| {
            if let Some(d) = n.disks.get(&spec.handle) {
                return Ok(d.device.clone());
            }
            let used: Vec<&str> = n.disks.values().map(|d| d.device.as_str()).collect();
            let device = (1..)
                .map(|i| format!("nvme0n{i}"))
                .find(|d| !used.contains(&d.as_str()))
                .unwrap_or_default();
            n.disks.insert(
                spec.handle.clone(),
                SimDisk {
                    spec: spec.clone(),
                    device: device.clone(),
                    key_len,
                    mapped_at_ms: now_ms(),
                },
            );
            Ok(device)
        })
    }

    async fn detach(&self, handle: &str) -> BResult<()> {
        delay(self.shared.cfg.disk_latency_ms).await;
        let fail = &self.shared.cfg.fail_unmap_sources;
        self.shared.with(&self.name, |n| {
            if let Some(d) = n.disks.get(handle) {
                if let Some(f) = fail.iter().find(|f| d.spec.source.contains(f.as_str())) {
                    return Err(BackendError::new(format!(
                        "simulated DPU cannot disconnect volume '{}': injected failure '{f}'",
                        d.spec.source
                    )));
                }
            }
            n.disks.remove(handle);
            Ok(())
        })
    }

    async fn list(&self) -> BResult<Vec<String>> {
        self.shared
            .read(&self.name, |n| Ok(n.disks.keys().cloned().collect()))
    }

    /// Records the limits with the mapping (the lab state file shows them).
    async fn set_qos(&self, handle: &str, qos: &Qos) -> BResult<()> {
        delay(self.shared.cfg.disk_latency_ms).await;
        self.shared.with(&self.name, |n| {
            let d = n
                .disks
                .get_mut(handle)
                .ok_or_else(|| BackendError::new(format!("disk {handle} is not mapped")))?;
            d.spec.qos = (!qos.is_unlimited()).then_some(*qos);
            Ok(())
        })
    }

    async fn resize(&self, handle: &str, bytes: u64) -> BResult<u64> {
        delay(self.shared.cfg.disk_latency_ms).await;
        let shared = &self.shared;
        shared.with_volumes(&self.name, |n, volumes| {
            let d = n
                .disks
                .get(handle)
                .ok_or_else(|| BackendError::new(format!("disk {handle} is not mapped")))?;
            let cur = shared.volume_bytes(volumes, &d.spec.source);
            if bytes < cur {
                return Err(BackendError::new(format!(
                    "volume '{}' is {cur} bytes; cloud volumes cannot shrink",
                    d.spec.source
                )));
            }
            volumes.insert(d.spec.source.clone(), bytes);
            Ok(bytes)
        })
    }

    async fn info(&self, handle: &str) -> BResult<BlockInfo> {
        let shared = &self.shared;
        shared.read_lab(&self.name, |n, volumes| {
            let d = n
                .disks
                .get(handle)
                .ok_or_else(|| BackendError::new(format!("disk {handle} is not mapped")))?;
            let capacity = shared.volume_bytes(volumes, &d.spec.source);
            // Thin volumes: what has been written so far is allocated.
            let written = (secs_since(d.mapped_at_ms) as u64) * 20 * 4096;
            Ok(BlockInfo {
                capacity,
                allocation: written.min(capacity),
                physical: capacity,
            })
        })
    }

    async fn stats(&self, handle: &str) -> BResult<BlockStats> {
        self.shared.read(&self.name, |n| {
            let d = n
                .disks
                .get(handle)
                .ok_or_else(|| BackendError::new(format!("disk {handle} is not mapped")))?;
            let s = secs_since(d.mapped_at_ms);
            Ok(BlockStats {
                rd_req: 50 * s,
                rd_bytes: 50 * s * 4096,
                wr_req: 20 * s,
                wr_bytes: 20 * s * 4096,
                flush_req: s,
                rd_total_ns: 50 * s * 90_000,
                wr_total_ns: 20 * s * 120_000,
                flush_total_ns: s * 500_000,
            })
        })
    }
}

#[async_trait]
impl Nics for SimNode {
    async fn plug(&self, spec: &NicSpec) -> BResult<String> {
        delay(self.shared.cfg.nic_latency_ms).await;
        if self.shared.cfg.fail_nic_macs.contains(&spec.mac) {
            return Err(BackendError::new(format!(
                "simulated DPU cannot plug NIC {}: injected failure",
                spec.mac
            )));
        }
        let node = self.name.clone();
        self.shared.with(&self.name, |n| {
            if let Some(x) = n.nics.get(&spec.handle) {
                return Ok(x.representor.clone());
            }
            let used: Vec<&str> = n.nics.values().map(|x| x.representor.as_str()).collect();
            let free = |r: &String| !used.contains(&r.as_str());
            let rep = spec
                .representor
                .clone()
                .filter(free)
                .or_else(|| (0..NIC_FUNCTIONS).map(|i| format!("pf0vf{i}")).find(free))
                .ok_or_else(|| BackendError::new(format!("no free NIC function on node {node}")))?;
            n.nics.insert(
                spec.handle.clone(),
                SimNic {
                    spec: spec.clone(),
                    representor: rep.clone(),
                    plugged_at_ms: now_ms(),
                },
            );
            Ok(rep)
        })
    }

    async fn unplug(&self, handle: &str) -> BResult<()> {
        delay(self.shared.cfg.nic_latency_ms).await;
        let fail = &self.shared.cfg.fail_unplug_macs;
        self.shared.with(&self.name, |n| {
            if let Some(x) = n.nics.get(handle) {
                if fail.contains(&x.spec.mac) {
                    return Err(BackendError::new(format!(
                        "simulated DPU cannot unplug NIC {}: injected failure",
                        x.spec.mac
                    )));
                }
            }
            n.nics.remove(handle);
            Ok(())
        })
    }

    async fn list(&self) -> BResult<Vec<String>> {
        self.shared
            .read(&self.name, |n| Ok(n.nics.keys().cloned().collect()))
    }

    async fn stats(&self, handle: &str) -> BResult<IfStats> {
        self.shared.read(&self.name, |n| {
            let x = n
                .nics
                .get(handle)
                .ok_or_else(|| BackendError::new(format!("NIC {handle} is not plugged")))?;
            let s = secs_since(x.plugged_at_ms);
            Ok(IfStats {
                rx_bytes: 300 * s * 600,
                rx_packets: 300 * s,
                tx_bytes: 200 * s * 400,
                tx_packets: 200 * s,
                ..IfStats::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            nodes: 2,
            power_latency_ms: 0,
            disk_latency_ms: 0,
            nic_latency_ms: 0,
            graceful_shutdown_ms: 0,
            fail_disk_sources: vec!["broken".into()],
            ..SimConfig::default()
        }
    }

    fn disk(h: &str, src: &str) -> DiskSpec {
        DiskSpec {
            handle: h.into(),
            target: "vda".into(),
            source: src.into(),
            readonly: false,
            auth: None,
            serial: None,
            volume: Default::default(),
            unit: None,
            bus: None,
            qos: None,
        }
    }

    #[tokio::test]
    async fn state_survives_rebuild_and_failures_inject() {
        let d = tempfile::tempdir().unwrap();
        let nodes = build(&cfg(), d.path()).unwrap();
        assert_eq!(nodes.len(), 2);
        let n = &nodes[0];
        n.power.on().await.unwrap();
        assert_eq!(
            n.disks.attach(&disk("h1", "rbd:p/v")).await.unwrap(),
            "nvme0n1"
        );
        assert_eq!(
            n.disks.attach(&disk("h2", "rbd:p/w")).await.unwrap(),
            "nvme0n2"
        );
        let e = n
            .disks
            .attach(&disk("h3", "rbd:p/broken"))
            .await
            .unwrap_err();
        assert!(e.msg.contains("injected"), "{e}");
        let again = build(&cfg(), d.path()).unwrap();
        assert_eq!(again[0].power.state().await.unwrap().state, PowerState::On);
        assert_eq!(again[0].disks.list().await.unwrap(), vec!["h1", "h2"]);
        again[0].disks.detach("h1").await.unwrap();
        again[0].disks.detach("h1").await.unwrap();
        assert_eq!(again[0].disks.list().await.unwrap(), vec!["h2"]);
    }

    #[tokio::test]
    async fn one_file_per_node_and_the_old_single_file_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let old = r#"{"nodes":{"node-1":{"power":"On","boot":null,"boots":3,"disks":{},"nics":{}},"gone":{"power":"On","boot":null,"boots":1,"disks":{},"nics":{}}},"volumes":{"rbd:p/v":1073741824}}"#;
        std::fs::write(d.path().join("sim-lab.json"), old).unwrap();
        let nodes = build(&cfg(), d.path()).unwrap();
        assert_eq!(nodes[0].power.state().await.unwrap().state, PowerState::On);
        assert_eq!(nodes[1].power.state().await.unwrap().state, PowerState::Off);
        let dir = d.path().join("sim-lab");
        assert!(!d.path().join("sim-lab.json").exists());
        assert!(dir.join("node-1.json").exists() && dir.join("volumes.json").exists());
        // A node that never changed has no file; one that changes gets its own.
        assert!(!dir.join("node-2.json").exists());
        nodes[1].power.on().await.unwrap();
        let n2: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("node-2.json")).unwrap()).unwrap();
        assert_eq!(n2["power"], "On");
        // A stale node's file goes with the next build; a corrupt one is an error.
        std::fs::write(dir.join("old-node.json"), "{}").unwrap();
        build(&cfg(), d.path()).unwrap();
        assert!(!dir.join("old-node.json").exists());
        std::fs::write(dir.join("node-2.json"), "{").unwrap();
        let e = build(&cfg(), d.path()).err().unwrap();
        assert!(e.contains("corrupt simulated lab state"), "{e}");
    }

    #[tokio::test]
    async fn graceful_shutdown_does_not_outlive_its_boot() {
        let d = tempfile::tempdir().unwrap();
        let c = SimConfig {
            graceful_shutdown_ms: 50,
            ..cfg()
        };
        let nodes = build(&c, d.path()).unwrap();
        let p = &nodes[0].power;
        p.on().await.unwrap();
        p.off(false).await.unwrap();
        p.off(true).await.unwrap();
        p.on().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(p.state().await.unwrap().state, PowerState::On);
        p.off(false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(p.state().await.unwrap().state, PowerState::Off);
    }

    #[tokio::test]
    async fn nic_pool_exhausts() {
        let d = tempfile::tempdir().unwrap();
        let nodes = build(&cfg(), d.path()).unwrap();
        for i in 0..NIC_FUNCTIONS {
            let spec = NicSpec {
                handle: format!("n{i}"),
                mac: format!("52:54:00:00:00:{i:02x}"),
                bridge: None,
                interface_id: None,
                domain_uuid: String::new(),
                representor: None,
            };
            assert_eq!(
                nodes[1].nics.plug(&spec).await.unwrap(),
                format!("pf0vf{i}")
            );
        }
        let spec = NicSpec {
            handle: "x".into(),
            mac: "52:54:00:00:01:00".into(),
            bridge: None,
            interface_id: None,
            domain_uuid: String::new(),
            representor: None,
        };
        let e = nodes[1].nics.plug(&spec).await.unwrap_err();
        assert_eq!(e.msg, "no free NIC function on node node-2");
    }
}
