//! Hardware behind a node, as traits. Each node has a BMC ([`Power`]), a DPU that maps cloud
//! volumes ([`Disks`]) and a DPU that plugs NIC functions ([`Nics`]). Implementations: the
//! simulated lab ([`sim`]); Redfish/IPMI, SPDK and OVSDB come next.
//!
//! Backend calls are named by deterministic handles chosen by the driver (e.g.
//! `mv-<uuid>-vda`) and recorded in the domain's journal before the call runs, so an
//! interrupted start can be undone after a crash. `detach`/`unplug` of an unknown handle
//! succeeds: undo must be idempotent.

pub mod sim;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::secrets::SecretValue;

/// A backend failure, carrying the backend's own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub String);

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendError {}

/// Result of backend calls.
pub type BResult<T> = Result<T, BackendError>;

/// Power as the BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
}

/// Boot override target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootDev {
    /// The first mapped disk.
    Disk,
    /// PXE.
    Network,
    /// Virtual media.
    Cdrom,
}

/// Static facts about a node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique name.
    pub name: String,
    /// CPU sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// CPU frequency.
    pub mhz: u32,
    /// Architecture, e.g. x86_64.
    pub arch: String,
    /// CPU model name.
    pub cpu_model: String,
    /// Part of the simulated lab (no real hardware behind it); shown to clients.
    pub simulated: bool,
}

impl NodeSpec {
    /// Hardware threads.
    pub fn cpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
}

/// Credentials a disk source needs (from the disk's `<auth>` and a libvirt secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskAuth {
    /// User name (`<auth username>`, e.g. the cephx user).
    pub username: Option<String>,
    /// The secret it came from.
    pub secret_uuid: String,
    /// The key itself: handed to the backend, never written anywhere by metalvirt.
    #[serde(skip)]
    pub key: Option<SecretValue>,
}

/// A disk to present to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Deterministic handle.
    pub handle: String,
    /// Target dev in the domain (vda…).
    pub target: String,
    /// Human-readable source (`rbd:pool/vol`, a path, …).
    pub source: String,
    /// Read-only.
    pub readonly: bool,
    /// Credentials, when the disk has `<auth>`.
    #[serde(default)]
    pub auth: Option<DiskAuth>,
    /// `<serial>` (the volume id nova puts there).
    #[serde(default)]
    pub serial: Option<String>,
}

/// Sizes of a mapped disk, in bytes (`virDomainBlockInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockInfo {
    /// Size the host sees.
    pub capacity: u64,
    /// Bytes allocated in the backing volume.
    pub allocation: u64,
    /// Size of the backing volume.
    pub physical: u64,
}

/// I/O counters of a mapped disk (`virDomainBlockStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStats {
    /// Read requests.
    pub rd_req: i64,
    /// Bytes read.
    pub rd_bytes: i64,
    /// Write requests.
    pub wr_req: i64,
    /// Bytes written.
    pub wr_bytes: i64,
    /// Flush requests.
    pub flush_req: i64,
    /// Total time spent reading, ns.
    pub rd_total_ns: i64,
    /// Total time spent writing, ns.
    pub wr_total_ns: i64,
    /// Total time spent flushing, ns.
    pub flush_total_ns: i64,
}

/// Traffic counters of a plugged NIC (`virDomainInterfaceStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfStats {
    /// Bytes received.
    pub rx_bytes: i64,
    /// Packets received.
    pub rx_packets: i64,
    /// Receive errors.
    pub rx_errs: i64,
    /// Receive drops.
    pub rx_drop: i64,
    /// Bytes sent.
    pub tx_bytes: i64,
    /// Packets sent.
    pub tx_packets: i64,
    /// Send errors.
    pub tx_errs: i64,
    /// Send drops.
    pub tx_drop: i64,
}

/// A NIC function to plug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// Deterministic handle.
    pub handle: String,
    /// MAC address.
    pub mac: String,
    /// Bridge, when the interface names one.
    pub bridge: Option<String>,
    /// Neutron port id (`iface-id`).
    pub interface_id: Option<String>,
    /// Owning domain.
    pub domain_uuid: String,
}

/// A BMC.
#[async_trait]
pub trait Power: Send + Sync {
    /// Current power state.
    async fn state(&self) -> BResult<PowerState>;
    /// Power on.
    async fn on(&self) -> BResult<()>;
    /// Power off: hard (ForceOff) or graceful (returns at once).
    async fn off(&self, hard: bool) -> BResult<()>;
    /// Restart: hard (ForceRestart) or graceful.
    async fn restart(&self, hard: bool) -> BResult<()>;
    /// Boot override.
    async fn set_boot(&self, dev: BootDev, persistent: bool) -> BResult<()>;
}

/// Disk mapping on the node's DPU.
#[async_trait]
pub trait Disks: Send + Sync {
    /// Maps a volume; returns the device the host sees.
    async fn attach(&self, spec: &DiskSpec) -> BResult<String>;
    /// Unmaps (idempotent).
    async fn detach(&self, handle: &str) -> BResult<()>;
    /// Handles currently mapped.
    async fn list(&self) -> BResult<Vec<String>>;
    /// Grows the volume behind a mapped disk to `bytes`; returns the size the host now sees.
    async fn resize(&self, handle: &str, bytes: u64) -> BResult<u64>;
    /// Sizes of a mapped disk.
    async fn info(&self, handle: &str) -> BResult<BlockInfo>;
    /// I/O counters of a mapped disk.
    async fn stats(&self, handle: &str) -> BResult<BlockStats>;
}

/// NIC plumbing on the node's DPU.
#[async_trait]
pub trait Nics: Send + Sync {
    /// Plugs a function; returns its representor name.
    async fn plug(&self, spec: &NicSpec) -> BResult<String>;
    /// Unplugs (idempotent).
    async fn unplug(&self, handle: &str) -> BResult<()>;
    /// Handles currently plugged.
    async fn list(&self) -> BResult<Vec<String>>;
    /// Traffic counters of a plugged NIC.
    async fn stats(&self, handle: &str) -> BResult<IfStats>;
}

/// One bare-metal server and its backends.
#[derive(Clone)]
pub struct Node {
    /// Static facts.
    pub spec: NodeSpec,
    /// BMC.
    pub power: Arc<dyn Power>,
    /// Disk mapping.
    pub disks: Arc<dyn Disks>,
    /// NIC plumbing.
    pub nics: Arc<dyn Nics>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("spec", &self.spec).finish()
    }
}
