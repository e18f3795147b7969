//! Hardware behind a node, as traits. Each node has a BMC ([`Power`]), a DPU that maps cloud
//! volumes ([`Disks`]) and a DPU that plugs NIC functions ([`Nics`]). Implementations: the
//! simulated lab ([`sim`]), real BMCs ([`bmc`]: Redfish, IPMI), SPDK on the DPU for disks
//! ([`spdk`]) and the DPU's Open vSwitch for NICs ([`ovs`]).
//! [`inventory`] builds the nodes from the configuration.
//!
//! Backend calls are named by deterministic handles chosen by the driver (e.g.
//! `mv-<uuid>-vda`) and recorded in the domain's journal before the call runs, so an
//! interrupted start can be undone after a crash. `detach`/`unplug` of an unknown handle
//! succeeds: undo must be idempotent.

pub mod agent;
pub mod bmc;
pub mod inventory;
pub mod jsonstream;
pub mod ovs;
#[doc(hidden)]
pub(crate) mod scripted;
pub mod sim;
pub mod spdk;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::secret_value::SecretValue;

/// What kind of failure a backend call met; the driver maps it to a libvirt error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer refused or failed the request.
    Failed,
    /// The peer rejected our credentials.
    Auth,
    /// No answer within the call's time limit.
    Timeout,
    /// The peer could not be reached at all.
    Unreachable,
    /// The peer does not offer what was asked.
    Unsupported,
}

/// A backend failure, carrying the backend's own reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendError {
    /// Classification.
    pub kind: ErrorKind,
    /// The reason, with the peer's own message where it gave one. Never a credential.
    pub msg: String,
}

impl BackendError {
    /// A plain failure.
    pub fn new(msg: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Failed, msg)
    }

    /// A failure of a given kind.
    pub fn with_kind(kind: ErrorKind, msg: impl Into<String>) -> Self {
        BackendError {
            kind,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
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
    /// On its way on (Redfish `PoweringOn`): not yet on, not to be taken for off.
    PoweringOn,
    /// On its way off (Redfish `PoweringOff`).
    PoweringOff,
}

/// One reading of a BMC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerReading {
    /// Power.
    pub state: PowerState,
    /// A fault the BMC reports (IPMI main power fault, Redfish health Critical), if any.
    pub fault: Option<String>,
}

impl PowerReading {
    /// A reading without fault.
    pub fn ok(state: PowerState) -> Self {
        PowerReading { state, fault: None }
    }
}

/// Firmware boot mode for a boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootMode {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

/// A boot override, as derived from the domain's `<os>` and boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRequest {
    /// Device.
    pub dev: BootDev,
    /// For every boot (Redfish `Continuous`, IPMI `persistent`) rather than the next only.
    pub persistent: bool,
    /// Firmware mode, when the domain names one (`<os firmware>`, `<loader>`).
    pub mode: Option<BootMode>,
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
    /// Which parts are simulated; shown to clients.
    pub simulated: Simulated,
    /// How long to wait for the BMC to report On after a power on.
    pub power_on_timeout: std::time::Duration,
    /// How long to wait for the BMC to report Off after a forced power off.
    pub power_off_timeout: std::time::Duration,
    /// Boot overrides apply to every boot (else to the next boot only).
    pub boot_persistent: bool,
    /// Where the BMC is, for messages (`redfish https://10.0.0.5`, never credentials).
    pub bmc_desc: String,
    /// The server's host-facing NIC functions on its DPU, as (function, representor) pairs
    /// (shared: every simulated node has the same pool).
    pub nic_functions: std::sync::Arc<[(String, String)]>,
    /// The DPU switch bridge its NICs join (the integration bridge).
    pub nic_bridge: std::sync::Arc<str>,
}

/// Which parts of a node are the simulated lab's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Simulated {
    /// The BMC.
    pub power: bool,
    /// Disk mapping on the DPU.
    pub disks: bool,
    /// NIC plumbing on the DPU.
    pub nics: bool,
}

impl Simulated {
    /// Anything simulated.
    pub fn any(&self) -> bool {
        self.power || self.disks || self.nics
    }

    /// Everything simulated.
    pub fn all(&self) -> bool {
        self.power && self.disks && self.nics
    }

    /// What is simulated, as a sentence for messages: "BMC is SIMULATED", "disks and NICs
    /// are SIMULATED"; `None` when nothing is.
    pub fn sentence(&self) -> Option<String> {
        let parts = self.parts();
        match parts.as_str() {
            "" => None,
            "BMC" => Some("BMC is SIMULATED".into()),
            p => Some(format!("{p} are SIMULATED")),
        }
    }

    /// The simulated parts: "BMC, disks and NICs".
    fn parts(&self) -> String {
        let parts: Vec<&str> = [
            (self.power, "BMC"),
            (self.disks, "disks"),
            (self.nics, "NICs"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, p)| *p)
        .collect();
        match parts.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    }
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
    /// The volume, as a backend connects it.
    #[serde(default)]
    pub volume: Volume,
    /// Position on the host's disk controller, 1-based (the boot disk is 1); `None` lets
    /// the backend choose.
    #[serde(default)]
    pub unit: Option<u32>,
    /// `<target bus>` as the definition asks.
    #[serde(default)]
    pub bus: Option<String>,
    /// I/O limits (`<iotune>`), applied when the disk is mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// A disk's I/O limits in the units SPDK's bdev QoS takes (`bdev_set_qos_limit`): I/Os per
/// second for reads and writes together, and MiB/s for both, reads and writes. 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// Read and write I/Os per second (a multiple of 1000).
    pub rw_ios_per_sec: u64,
    /// Read and write MiB per second.
    pub rw_mbytes_per_sec: u64,
    /// Read MiB per second.
    pub r_mbytes_per_sec: u64,
    /// Write MiB per second.
    pub w_mbytes_per_sec: u64,
}

impl Qos {
    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        *self == Qos::default()
    }
}

/// Where a disk's data lives, parsed from its `<disk>` element.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Volume {
    /// An NVMe-oF namespace: `<source protocol='nvme-tcp|nvme-rdma' name='<subnqn>'>`.
    Nvmf {
        /// `tcp` or `rdma`.
        transport: String,
        /// Subsystem NQN of the volume.
        subnqn: String,
        /// Target address.
        host: String,
        /// Target port.
        port: u16,
    },
    /// An iSCSI LUN: `<source protocol='iscsi' name='<iqn>/<lun>'>` or a
    /// `/dev/disk/by-path/ip-…-iscsi-<iqn>-lun-<n>` block path.
    Iscsi {
        /// Target IQN.
        iqn: String,
        /// LUN.
        lun: u32,
        /// Portal address.
        host: String,
        /// Portal port.
        port: u16,
    },
    /// A Ceph RBD image: `<source protocol='rbd' name='<pool>/<image>'>`.
    Rbd {
        /// Pool.
        pool: String,
        /// Image.
        image: String,
        /// Monitors, `host:port`.
        monitors: Vec<String>,
    },
    /// A block device or file on the DPU (`type='block'`, `type='file'`), for labs.
    Local {
        /// Path on the DPU.
        path: String,
        /// Block size to present (a file has none of its own); `None`: the device's.
        #[serde(default)]
        block_size: Option<u32>,
    },
    /// Anything else (a storage-pool volume): only the simulated lab maps it.
    #[default]
    Other,
}

/// Sizes of a mapped disk, in bytes (`virDomainBlockInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Size the host sees.
    pub capacity: u64,
    /// Bytes allocated in the backing volume.
    pub allocation: u64,
    /// Size of the backing volume.
    pub physical: u64,
}

/// I/O counters of a mapped disk (`virDomainBlockStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// The representor it had before (re-plugging after a crash keeps the same function
    /// when it is free).
    #[serde(default)]
    pub representor: Option<String>,
}

/// A BMC.
#[async_trait]
pub trait Power: Send + Sync {
    /// Current power state (and any fault the BMC reports).
    async fn state(&self) -> BResult<PowerReading>;
    /// Power on.
    async fn on(&self) -> BResult<()>;
    /// Power off: hard (ForceOff) or graceful (returns at once).
    async fn off(&self, hard: bool) -> BResult<()>;
    /// Restart: hard (ForceRestart) or graceful.
    async fn restart(&self, hard: bool) -> BResult<()>;
    /// Boot override.
    async fn set_boot(&self, req: &BootRequest) -> BResult<()>;
    /// What the BMC's sensors read: power drawn, inlet temperature. A driver that reads none
    /// answers `Unsupported` at once (no request).
    async fn sensors(&self) -> BResult<Sensors> {
        Err(BackendError::with_kind(
            ErrorKind::Unsupported,
            "this BMC driver reads no sensors",
        ))
    }
    /// Opens the server's serial console (IPMI Serial-over-LAN): its output, and its input.
    async fn console(&self) -> BResult<ConsoleIo> {
        Err(BackendError::with_kind(
            ErrorKind::Unsupported,
            "this BMC driver offers no serial console",
        ))
    }
    /// Releases what the client holds on the BMC (a Redfish session); at daemon shutdown.
    async fn close(&self) {}
    /// Power changes the BMC announces on its own (OpenBMC's PropertiesChanged signals): the
    /// counter moves at each, and the driver reads the state at once instead of at its next
    /// poll. `None`: the BMC must be polled.
    fn power_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A serial console session: what the server writes on its serial line, and a way to type.
/// Dropping it ends the session.
pub struct ConsoleIo {
    /// The server's output.
    pub output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// Keystrokes to the server.
    pub input: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
}

impl std::fmt::Debug for ConsoleIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleIo")
    }
}

/// What a server's BMC reads from its sensors (what no hypervisor can report). A reading
/// the BMC does not offer is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensors {
    /// Power drawn by the server, in watts.
    pub power_watts: Option<f64>,
    /// Inlet (intake) air temperature, in °C.
    pub inlet_celsius: Option<f64>,
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
    /// Replaces the I/O limits of a mapped disk (all zero: none).
    async fn set_qos(&self, handle: &str, qos: &Qos) -> BResult<()> {
        let _ = (handle, qos);
        Err(BackendError::with_kind(
            ErrorKind::Unsupported,
            "this disk backend cannot limit I/O",
        ))
    }
    /// Checks, before anything moves, that this backend can present `spec` (its source and
    /// bus); `Ok(Some(note))` when it presents it other than the definition says, for
    /// GET_MESSAGES. An `Unsupported` error means the definition asks for the impossible.
    /// Asked before every start and hot-plug (an agent answers it over the network).
    async fn accepts(&self, _spec: &DiskSpec) -> BResult<Option<String>> {
        Ok(None)
    }
    /// Repairs what the backend undid on its own (SPDK drops a namespace whose remote volume
    /// blinked and does not add it back); returns what it repaired, for the log.
    async fn heal(&self) -> BResult<Vec<String>> {
        Ok(Vec::new())
    }
    /// How often [`Disks::heal`] should run; `None`: never.
    fn heal_interval(&self) -> Option<std::time::Duration> {
        None
    }
    /// Removes what the backend made for disks that are no longer mapped (an empty
    /// per-domain subsystem left by a crash); after a reconcile.
    async fn tidy(&self) -> BResult<Vec<String>> {
        Ok(Vec::new())
    }
    /// Bumped each time the backend's peer comes back after being out of reach (a DPU's
    /// agent restarted or reconnected): what it holds may have changed, so the driver
    /// reconciles the node's disks again. `None`: no such peer.
    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
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
    /// As [`Disks::reconnects`], for the node's NICs.
    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
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
