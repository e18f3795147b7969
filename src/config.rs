//! Daemon configuration: a strict TOML file (unknown keys are errors naming the key) plus the
//! command-line overrides. With no file at all the daemon runs the simulated lab.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Top-level configuration (`/etc/metalvirt/metalvirtd.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the unix sockets are created (`libvirt-sock`, `libvirt-sock-ro`).
    pub socket_dir: PathBuf,
    /// Persistent definitions (domains/, autostart/).
    pub config_dir: PathBuf,
    /// Live state (domains/<uuid>.json, nodes.json); must survive daemon restarts.
    pub state_dir: PathBuf,
    /// File mode of the read-write socket.
    pub rw_socket_mode: u32,
    /// File mode of the read-only socket.
    pub ro_socket_mode: u32,
    /// Outstanding calls per client (libvirtd's `max_client_requests`).
    pub max_client_requests: usize,
    /// Concurrent client connections.
    pub max_clients: usize,
    /// Host name reported by GET_HOSTNAME (default: the system's).
    pub hostname: Option<String>,
    /// Idle time after which a client that supports keepalive is sent a PING, in
    /// milliseconds (libvirtd's `keepalive_interval`, 5 s); 0 disables server PINGs.
    pub keepalive_interval_ms: u64,
    /// Unanswered PINGs after which the client is disconnected (`keepalive_count`).
    pub keepalive_count: u32,
    /// Power watcher settings.
    pub watcher: WatcherConfig,
    /// The simulated lab.
    pub sim: SimConfig,
}

/// The power watcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatcherConfig {
    /// Poll interval per bound node, in milliseconds.
    pub interval_ms: u64,
}

/// The built-in simulated lab (used when no real nodes are configured).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Number of simulated nodes.
    pub nodes: usize,
    /// Sockets per node.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Memory per node in MiB.
    pub memory_mib: u64,
    /// Latency of a BMC power call, in milliseconds.
    pub power_latency_ms: u64,
    /// Time a graceful shutdown takes before the server reads as off, in milliseconds.
    pub graceful_shutdown_ms: u64,
    /// Latency of mapping or unmapping one disk, in milliseconds.
    pub disk_latency_ms: u64,
    /// Latency of plugging or unplugging one NIC, in milliseconds.
    pub nic_latency_ms: u64,
    /// Injected failures: mapping a disk whose source contains one of these strings fails.
    pub fail_disk_sources: Vec<String>,
    /// Injected failures: plugging a NIC whose MAC is listed fails.
    pub fail_nic_macs: Vec<String>,
    /// Injected failures: powering on one of these nodes fails.
    pub fail_power_on_nodes: Vec<String>,
    /// Injected failures: unmapping a disk whose source contains one of these strings fails.
    pub fail_unmap_sources: Vec<String>,
    /// Injected failures: unplugging a NIC whose MAC is listed fails.
    pub fail_unplug_macs: Vec<String>,
    /// Size of a simulated cloud volume before anyone resizes it, in GiB.
    pub volume_gib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket_dir: PathBuf::from("/run/metalvirt"),
            config_dir: PathBuf::from("/etc/metalvirt"),
            state_dir: PathBuf::from("/var/lib/metalvirt"),
            rw_socket_mode: 0o700,
            ro_socket_mode: 0o777,
            max_client_requests: 16,
            max_clients: 5000,
            hostname: None,
            keepalive_interval_ms: 5000,
            keepalive_count: 5,
            watcher: WatcherConfig::default(),
            sim: SimConfig::default(),
        }
    }
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig { interval_ms: 5000 }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 4,
            sockets: 2,
            cores: 16,
            threads: 2,
            memory_mib: 256 * 1024,
            power_latency_ms: 200,
            graceful_shutdown_ms: 1000,
            disk_latency_ms: 20,
            nic_latency_ms: 5,
            fail_disk_sources: Vec::new(),
            fail_nic_macs: Vec::new(),
            fail_power_on_nodes: Vec::new(),
            fail_unmap_sources: Vec::new(),
            fail_unplug_macs: Vec::new(),
            volume_gib: 20,
        }
    }
}

impl Config {
    /// Parses a TOML document strictly.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Loads a file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_client_requests == 0 {
            return Err("max_client_requests must be at least 1".into());
        }
        if self.max_clients == 0 {
            return Err("max_clients must be at least 1".into());
        }
        if self.watcher.interval_ms == 0 {
            return Err("watcher.interval_ms must be at least 1".into());
        }
        let s = &self.sim;
        if s.sockets == 0 || s.cores == 0 || s.threads == 0 || s.memory_mib == 0 {
            return Err("sim: sockets, cores, threads and memory_mib must be positive".into());
        }
        Ok(())
    }

    /// The watcher's poll interval.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watcher.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("socket_dir = '/x'\nbogus_key = 1\n").unwrap_err();
        assert!(e.contains("bogus_key"), "{e}");
        let e = Config::from_toml("[sim]\nnodez = 3\n").unwrap_err();
        assert!(e.contains("nodez"), "{e}");
    }

    #[test]
    fn values_are_read_and_defaults_kept() {
        let c = Config::from_toml("[sim]\nnodes = 7\npower_latency_ms = 0\n").unwrap();
        assert_eq!(c.sim.nodes, 7);
        assert_eq!(c.sim.power_latency_ms, 0);
        assert_eq!(c.sim.cores, 16);
        assert!(Config::from_toml("max_client_requests = 0").is_err());
    }

    #[test]
    fn packaged_example_parses() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/metalvirtd.toml");
        Config::load(Path::new(p)).unwrap();
    }
}
