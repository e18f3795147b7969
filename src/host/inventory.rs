//! What a libvirt host has besides domains, as metalvirt has it:
//! - **networks**: the DPU switch bridges the nodes' NICs join (OVN's integration bridge),
//!   shown read-only — Neutron/OVN own the networks, metalvirt only plugs ports into them;
//! - **node devices**: the `computer`, and every node's host-facing NIC functions as PCI
//!   devices (NUMA cell = the node's cell in the capabilities, PCI domain = the same index);
//! - storage pools, host interfaces and network filters: none. Volumes are the cloud's, the
//!   servers' host networking is their DPUs', and filtering is OVN's.

use std::fmt::Write;

use uuid::Uuid;

use super::esc;
use crate::driver::Driver;
use crate::error::{Missing, VirError, VirResult};

/// `VIR_CONNECT_LIST_NETWORKS_*` (and the same bits of the storage pool and host interface
/// filters): which groups a list keeps.
mod list {
    pub const INACTIVE: u32 = 1;
    pub const ACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const AUTOSTART: u32 = 16;
    pub const NO_AUTOSTART: u32 = 32;
}

/// `VIR_CONNECT_LIST_NODE_DEVICES_CAP_SYSTEM`, `_PCI_DEV`, `_ACTIVE`, `_INACTIVE`.
pub mod devcap {
    /// The `computer`.
    pub const SYSTEM: u32 = 1;
    /// PCI devices.
    pub const PCI_DEV: u32 = 2;
    /// Every capability bit (1 << 0 … 1 << 23).
    pub const ALL_CAPS: u32 = (1 << 24) - 1;
    /// Defined but not active.
    pub const INACTIVE: u32 = 1 << 30;
    /// Active.
    pub const ACTIVE: u32 = 1 << 31;
}

/// The flags `virConnectListAllNetworks` accepts.
pub const NETWORK_LIST_FLAGS: u32 = 63;

/// Whether an object that is always active, persistent and autostarted passes a list filter
/// of `VIR_CONNECT_LIST_*` group bits (a group with no bit set filters nothing).
fn passes(flags: u32) -> bool {
    let group = |yes: u32, no: u32| flags & (yes | no) == 0 || flags & yes != 0;
    group(list::ACTIVE, list::INACTIVE)
        && group(list::PERSISTENT, list::TRANSIENT)
        && group(list::AUTOSTART, list::NO_AUTOSTART)
}

// ---------------------------------------------------------------- networks

/// A network: one bridge of the nodes' DPU switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// Its name: the bridge's.
    pub name: String,
    /// Stable per host and bridge.
    pub uuid: Uuid,
    /// How many nodes' NICs join it.
    pub nodes: usize,
}

fn network_uuid(d: &Driver, bridge: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("metalvirt:{}:network:{bridge}", d.hostname()).as_bytes(),
    )
}

/// The networks, by name, that pass the `virConnectListAllNetworks` filter `flags`.
pub fn networks(d: &Driver, flags: u32) -> Vec<HostNetwork> {
    if !passes(flags) {
        return Vec::new();
    }
    let mut by_name: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in d.nodes() {
        *by_name.entry(&n.spec.nic_bridge).or_default() += 1;
    }
    by_name
        .into_iter()
        .map(|(name, nodes)| HostNetwork {
            name: name.to_string(),
            uuid: network_uuid(d, name),
            nodes,
        })
        .collect()
}

/// `virNetworkLookupByName`.
pub fn network(d: &Driver, name: &str) -> VirResult<HostNetwork> {
    networks(d, 0)
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| {
            VirError::not_found(
                Missing::Network,
                &format!("no network with matching name '{name}'"),
            )
        })
}

/// `virNetworkLookupByUUID`.
pub fn network_by_uuid(d: &Driver, uuid: &Uuid) -> VirResult<HostNetwork> {
    networks(d, 0)
        .into_iter()
        .find(|n| n.uuid == *uuid)
        .ok_or_else(|| {
            VirError::not_found(
                Missing::Network,
                &format!("no network with matching uuid '{uuid}'"),
            )
        })
}

/// `virNetworkGetXMLDesc`: libvirt's form of a network over an existing Open vSwitch bridge.
pub fn network_xml(n: &HostNetwork) -> String {
    format!(
        "<network>\n  <name>{}</name>\n  <uuid>{}</uuid>\n  <forward mode='bridge'/>\n  <bridge name='{}'/>\n  <virtualport type='openvswitch'/>\n</network>\n",
        esc(&n.name),
        n.uuid,
        esc(&n.name)
    )
}

/// Why the network calls that change something are not offered.
pub const NETWORKS_READ_ONLY: &str =
    "networks belong to Neutron/OVN; metalvirt shows the bridges its nodes' NICs join, read-only";

// ---------------------------------------------------------------- node devices

/// The root device every libvirt host has.
pub const COMPUTER: &str = "computer";

/// A node device: the `computer`, or one NIC function of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDevice {
    /// The `computer` (capability `system`).
    Computer,
    /// NIC function `function` of node `node` (indexes), capability `pci`.
    NicFunction {
        /// The node's index (its NUMA cell and PCI domain).
        node: usize,
        /// The function's index in the node's pool.
        function: usize,
    },
}

/// Functions per PCI slot.
const FUNCTIONS_PER_SLOT: usize = 8;
/// The bus the functions sit on.
const BUS: usize = 3;

impl HostDevice {
    /// libvirt's name: `computer`, `pci_DDDD_BB_SS_F`.
    pub fn name(&self) -> String {
        match *self {
            HostDevice::Computer => COMPUTER.to_string(),
            HostDevice::NicFunction { node, function } => format!(
                "pci_{node:04x}_{BUS:02x}_{:02x}_{:x}",
                function / FUNCTIONS_PER_SLOT,
                function % FUNCTIONS_PER_SLOT
            ),
        }
    }

    /// Its capabilities (`virNodeDeviceListCaps`).
    pub fn caps(&self) -> &'static [&'static str] {
        match self {
            HostDevice::Computer => &["system"],
            HostDevice::NicFunction { .. } => &["pci"],
        }
    }

    /// Its parent's name (`virNodeDeviceGetParent`).
    pub fn parent(&self) -> Option<&'static str> {
        match self {
            HostDevice::Computer => None,
            HostDevice::NicFunction { .. } => Some(COMPUTER),
        }
    }

    fn cap_bit(&self) -> u32 {
        match self {
            HostDevice::Computer => devcap::SYSTEM,
            HostDevice::NicFunction { .. } => devcap::PCI_DEV,
        }
    }
}

/// Every node device, in order: the computer, then each node's functions.
fn all_devices(d: &Driver) -> impl Iterator<Item = HostDevice> + '_ {
    std::iter::once(HostDevice::Computer).chain(d.nodes().iter().enumerate().flat_map(
        |(node, n)| {
            (0..n.spec.nic_functions.len())
                .map(move |function| HostDevice::NicFunction { node, function })
        },
    ))
}

/// The node devices that pass the `virConnectListAllNodeDevices` filter `flags` (capability
/// bits, `ACTIVE`/`INACTIVE`: every device here is active).
pub fn devices(d: &Driver, flags: u32) -> Vec<HostDevice> {
    if flags & (devcap::ACTIVE | devcap::INACTIVE) == devcap::INACTIVE {
        return Vec::new();
    }
    let caps = flags & devcap::ALL_CAPS;
    all_devices(d)
        .filter(|dev| caps == 0 || caps & dev.cap_bit() != 0)
        .collect()
}

/// The node devices with capability `cap` (`virNodeListDevices`; `None`: all).
pub fn devices_with_cap(d: &Driver, cap: Option<&str>) -> Vec<HostDevice> {
    all_devices(d)
        .filter(|dev| cap.is_none_or(|c| dev.caps().contains(&c)))
        .collect()
}

/// `virNodeDeviceLookupByName`.
pub fn device(d: &Driver, name: &str) -> VirResult<HostDevice> {
    let missing = || {
        VirError::not_found(
            Missing::NodeDevice,
            &format!("no node device with matching name '{name}'"),
        )
    };
    if name == COMPUTER {
        return Ok(HostDevice::Computer);
    }
    let parse = || -> Option<HostDevice> {
        let rest = name.strip_prefix("pci_")?;
        let mut parts = rest.split('_');
        let hex = |p: Option<&str>, width: usize| {
            p.filter(|p| p.len() == width)
                .and_then(|p| usize::from_str_radix(p, 16).ok())
        };
        let (node, bus, slot, func) = (
            hex(parts.next(), 4)?,
            hex(parts.next(), 2)?,
            hex(parts.next(), 2)?,
            hex(parts.next(), 1)?,
        );
        if parts.next().is_some() || bus != BUS || func >= FUNCTIONS_PER_SLOT {
            return None;
        }
        let function = slot * FUNCTIONS_PER_SLOT + func;
        let n = d.nodes().get(node)?;
        (function < n.spec.nic_functions.len())
            .then_some(HostDevice::NicFunction { node, function })
    };
    let dev = parse().ok_or_else(missing)?;
    // The name must be the canonical one (lower-case hex as libvirt writes it).
    if dev.name() != name {
        return Err(missing());
    }
    Ok(dev)
}

/// `virNodeDeviceGetXMLDesc`.
pub fn device_xml(d: &Driver, dev: &HostDevice) -> String {
    let mut x = String::with_capacity(512);
    let _ = writeln!(x, "<device>\n  <name>{}</name>", dev.name());
    if let Some(p) = dev.parent() {
        let _ = writeln!(x, "  <parent>{p}</parent>");
    }
    match *dev {
        HostDevice::Computer => {
            let _ = writeln!(
                x,
                "  <capability type='system'>\n    <product>metalvirt bare-metal host ({} nodes)</product>\n    <hardware>\n      <vendor>metalvirt</vendor>\n      <uuid>{}</uuid>\n    </hardware>\n  </capability>",
                d.nodes().len(),
                super::host_uuid(d)
            );
        }
        HostDevice::NicFunction { node, function } => {
            let n = &d.nodes()[node];
            let (func, rep) = &n.spec.nic_functions[function];
            // A DPU presents virtio-net functions to its server (Red Hat's virtio IDs).
            let _ = writeln!(
                x,
                "  <capability type='pci'>\n    <class>0x020000</class>\n    <domain>{node}</domain>\n    <bus>{BUS}</bus>\n    <slot>{}</slot>\n    <function>{}</function>\n    <product id='0x1041'>Virtio 1.0 network device ({} on {}, representor {})</product>\n    <vendor id='0x1af4'>Red Hat, Inc.</vendor>\n    <numa node='{node}'/>\n  </capability>",
                function / FUNCTIONS_PER_SLOT,
                function % FUNCTIONS_PER_SLOT,
                esc(func),
                esc(&n.spec.name),
                esc(rep)
            );
        }
    }
    x.push_str("</device>\n");
    x
}

/// Why node devices cannot be created or defined.
pub const DEVICES_FIXED: &str = "a bare-metal server's devices are its hardware; metalvirt shows its DPU's NIC functions and creates none";

/// Why storage pools and volumes are not offered.
pub const NO_STORAGE: &str = "volumes are the cloud's (Cinder, Ceph, NVMe-oF targets), attached as <disk> sources; metalvirt has no storage pools";

/// Why host interfaces are not offered.
pub const NO_INTERFACES: &str =
    "the servers' host networking is their DPUs'; metalvirt manages no host interfaces";

/// Why network filters are not offered.
pub const NO_NWFILTERS: &str =
    "filtering is OVN's (security groups); metalvirt has no network filters";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_follow_libvirts_groups() {
        assert!(passes(0));
        assert!(passes(list::ACTIVE | list::INACTIVE));
        assert!(passes(list::ACTIVE | list::PERSISTENT | list::AUTOSTART));
        assert!(!passes(list::INACTIVE));
        assert!(!passes(list::TRANSIENT));
        assert!(!passes(list::ACTIVE | list::NO_AUTOSTART));
    }

    #[test]
    fn device_names_are_libvirt_pci_names() {
        let d = HostDevice::NicFunction {
            node: 10,
            function: 9,
        };
        assert_eq!(d.name(), "pci_000a_03_01_1");
        assert_eq!(HostDevice::Computer.name(), "computer");
        assert_eq!(d.parent(), Some("computer"));
    }
}
