//! Device helpers: typed read-only views of disks and interfaces, libvirt's
//! disk target naming, MAC addresses and the aliases shown in live XML.

use std::collections::HashMap;

use super::tree::Element;

/// Order in which libvirt formats the children of `<devices>`; unknown
/// elements go last in their original order.
pub const DEVICE_ORDER: &[&str] = &[
    "emulator",
    "disk",
    "controller",
    "lease",
    "filesystem",
    "interface",
    "smartcard",
    "serial",
    "parallel",
    "console",
    "channel",
    "input",
    "tpm",
    "graphics",
    "sound",
    "audio",
    "video",
    "hostdev",
    "redirdev",
    "redirfilter",
    "hub",
    "watchdog",
    "memballoon",
    "rng",
    "nvram",
    "panic",
    "shmem",
    "memory",
    "iommu",
    "vsock",
    "crypto",
    "pstore",
];

/// The prefix of user-chosen device aliases (libvirt's rule: any other
/// alias is generated and is not kept in the persistent definition).
pub const USER_ALIAS_PREFIX: &str = "ua-";

/// A `<host>` of a network disk source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostDef {
    /// `name` attribute (host name or address).
    pub name: Option<String>,
    /// `port` attribute.
    pub port: Option<String>,
    /// `transport` attribute (tcp, unix, rdma).
    pub transport: Option<String>,
    /// `socket` attribute (for unix transport).
    pub socket: Option<String>,
}

/// The `<source>` of a disk or interface (only the attributes metalvirt
/// looks at; the element itself is kept verbatim in the definition).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceDef {
    /// `file` attribute (file disks).
    pub file: Option<String>,
    /// `dev` attribute (block disks, direct interfaces).
    pub dev: Option<String>,
    /// `dir` attribute (dir disks).
    pub dir: Option<String>,
    /// `protocol` attribute (network disks: rbd, iscsi, nbd, nvme-tcp, ...).
    pub protocol: Option<String>,
    /// `name` attribute (network disks: pool/image, iqn/lun, nqn, ...).
    pub name: Option<String>,
    /// `pool` attribute (volume disks).
    pub pool: Option<String>,
    /// `volume` attribute (volume disks).
    pub volume: Option<String>,
    /// `<host>` children (network disks).
    pub hosts: Vec<HostDef>,
    /// `bridge` attribute (bridge interfaces).
    pub bridge: Option<String>,
    /// `network` attribute (network interfaces).
    pub network: Option<String>,
    /// `mode` attribute (direct interfaces).
    pub mode: Option<String>,
}

/// The `<auth>` of a network disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthDef {
    /// `username` attribute.
    pub username: Option<String>,
    /// `<secret type>`.
    pub secret_type: Option<String>,
    /// `<secret uuid>`.
    pub secret_uuid: Option<String>,
    /// `<secret usage>`.
    pub secret_usage: Option<String>,
}

/// Read-only view of one `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskDef {
    /// Position of the disk among the child elements of `<devices>`.
    pub index: usize,
    /// `device` attribute: disk (default), cdrom, floppy, lun.
    pub device: String,
    /// `type` attribute: file (default), block, network, volume, dir, nvme.
    pub disk_type: String,
    /// `<driver name>`.
    pub driver_name: Option<String>,
    /// `<driver type>` (image format: raw, qcow2).
    pub driver_type: Option<String>,
    /// The `<source>` element's attributes.
    pub source: SourceDef,
    /// `<auth>` (also accepted inside `<source>`).
    pub auth: Option<AuthDef>,
    /// `<target dev>`.
    pub target_dev: Option<String>,
    /// `<target bus>`.
    pub target_bus: Option<String>,
    /// User alias (`ua-...`) from the definition.
    pub alias: Option<String>,
    /// Alias shown in live XML (the user alias or a generated one).
    pub live_alias: Option<String>,
    /// `<serial>` text.
    pub serial: Option<String>,
    /// `<boot order>`.
    pub boot_order: Option<u32>,
    /// `<readonly/>` present.
    pub readonly: bool,
    /// `<iotune>`, when the disk has one.
    pub iotune: Option<IoTune>,
}

/// libvirt's `<iotune>` fields that hold numbers (every one but `group_name`), in the order
/// libvirt reports them.
pub const IOTUNE_FIELDS: &[&str] = &[
    "total_bytes_sec",
    "read_bytes_sec",
    "write_bytes_sec",
    "total_iops_sec",
    "read_iops_sec",
    "write_iops_sec",
    "total_bytes_sec_max",
    "read_bytes_sec_max",
    "write_bytes_sec_max",
    "total_iops_sec_max",
    "read_iops_sec_max",
    "write_iops_sec_max",
    "size_iops_sec",
    "total_bytes_sec_max_length",
    "read_bytes_sec_max_length",
    "write_bytes_sec_max_length",
    "total_iops_sec_max_length",
    "read_iops_sec_max_length",
    "write_iops_sec_max_length",
];

/// A disk's `<iotune>`: the value of every numeric field (0 when absent) and the group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IoTune {
    /// Values in the order of [`IOTUNE_FIELDS`].
    pub values: [u64; 19],
    /// `<group_name>`.
    pub group_name: Option<String>,
    /// The first field that is not a number, if any (libvirt refuses the definition).
    pub invalid: Option<&'static str>,
}

impl IoTune {
    /// A field's value (0: none); unknown names read 0.
    pub fn get(&self, field: &str) -> u64 {
        IOTUNE_FIELDS
            .iter()
            .position(|f| *f == field)
            .map_or(0, |i| self.values[i])
    }

    /// Sets a numeric field; false for an unknown name.
    pub fn set(&mut self, field: &str, value: u64) -> bool {
        match IOTUNE_FIELDS.iter().position(|f| *f == field) {
            Some(i) => {
                self.values[i] = value;
                true
            }
            None => false,
        }
    }

    /// libvirt's consistency rule: a total and its read/write limits exclude each other.
    pub fn conflict(&self) -> Option<String> {
        for kind in ["bytes_sec", "iops_sec", "bytes_sec_max", "iops_sec_max"] {
            let total = self.get(&format!("total_{kind}"));
            let rw = self.get(&format!("read_{kind}")) + self.get(&format!("write_{kind}"));
            if total != 0 && rw != 0 {
                return Some(format!(
                    "total and read/write of {kind} cannot be set at the same time"
                ));
            }
        }
        None
    }

    /// The `<iotune>` element: every non-zero field, in libvirt's order; `None` when nothing
    /// is limited.
    pub fn to_element(&self) -> Option<Element> {
        let mut el = Element::new("iotune");
        for (f, v) in IOTUNE_FIELDS.iter().zip(self.values) {
            if v != 0 {
                el.push(Element::new(*f).with_text(v.to_string()));
            }
        }
        if let Some(g) = &self.group_name {
            el.push(Element::new("group_name").with_text(g.clone()));
        }
        (!el.children.is_empty()).then_some(el)
    }
}

fn iotune_view(disk: &Element) -> Option<IoTune> {
    let el = disk.child("iotune")?;
    let mut t = IoTune::default();
    for (i, f) in IOTUNE_FIELDS.iter().enumerate() {
        if let Some(c) = el.child(f) {
            match c.text().trim().parse::<u64>() {
                Ok(v) => t.values[i] = v,
                Err(_) => {
                    t.invalid.get_or_insert(f);
                }
            }
        }
    }
    t.group_name = el
        .child("group_name")
        .map(|g| g.text().trim().to_string())
        .filter(|g| !g.is_empty());
    Some(t)
}

/// Read-only view of one `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceDef {
    /// Position of the interface among the child elements of `<devices>`.
    pub index: usize,
    /// `type` attribute: bridge, network, direct, ethernet, hostdev, ...
    pub iface_type: String,
    /// `<mac address>` (lowercase, colon separated).
    pub mac: Option<String>,
    /// `<model type>`.
    pub model: Option<String>,
    /// The `<source>` element's attributes.
    pub source: SourceDef,
    /// `<target dev>` (host side device name, e.g. the tap).
    pub target_dev: Option<String>,
    /// `<virtualport type>` (openvswitch, 802.1Qbh, ...).
    pub virtualport_type: Option<String>,
    /// `<virtualport><parameters interfaceid>` (the Neutron port id for OVS).
    pub interface_id: Option<String>,
    /// `<mtu size>`.
    pub mtu: Option<u32>,
    /// User alias (`ua-...`) from the definition.
    pub alias: Option<String>,
    /// Alias shown in live XML (the user alias or a generated one).
    pub live_alias: Option<String>,
    /// `<boot order>`.
    pub boot_order: Option<u32>,
}

fn attr_string(el: Option<&Element>, key: &str) -> Option<String> {
    el.and_then(|e| e.attr(key)).map(str::to_string)
}

fn source_view(el: &Element) -> SourceDef {
    let Some(src) = el.child("source") else {
        return SourceDef::default();
    };
    let a = |k: &str| src.attr(k).map(str::to_string);
    SourceDef {
        file: a("file"),
        dev: a("dev"),
        dir: a("dir"),
        protocol: a("protocol"),
        name: a("name"),
        pool: a("pool"),
        volume: a("volume"),
        hosts: src
            .children_named("host")
            .map(|h| HostDef {
                name: h.attr("name").map(str::to_string),
                port: h.attr("port").map(str::to_string),
                transport: h.attr("transport").map(str::to_string),
                socket: h.attr("socket").map(str::to_string),
            })
            .collect(),
        bridge: a("bridge"),
        network: a("network"),
        mode: a("mode"),
    }
}

fn auth_view(el: &Element) -> Option<AuthDef> {
    let auth = el
        .child("auth")
        .or_else(|| el.child("source").and_then(|s| s.child("auth")))?;
    let secret = auth.child("secret");
    Some(AuthDef {
        username: auth.attr("username").map(str::to_string),
        secret_type: attr_string(secret, "type"),
        secret_uuid: attr_string(secret, "uuid"),
        secret_usage: attr_string(secret, "usage"),
    })
}

fn boot_order(el: &Element) -> Option<u32> {
    el.child("boot")
        .and_then(|b| b.attr("order"))
        .and_then(|o| o.trim().parse().ok())
}

/// The user alias (`ua-...`) of a device element, if any.
pub fn user_alias(dev: &Element) -> Option<&str> {
    dev.child("alias")
        .and_then(|a| a.attr("name"))
        .filter(|n| n.starts_with(USER_ALIAS_PREFIX))
}

/// A read-only view of a `<disk>` element.
pub fn disk_view(index: usize, el: &Element, live_alias: Option<String>) -> DiskDef {
    let driver = el.child("driver");
    let target = el.child("target");
    let serial = el.child("serial").map(|s| s.text());
    DiskDef {
        index,
        device: el.attr("device").unwrap_or("disk").to_string(),
        disk_type: el.attr("type").unwrap_or("file").to_string(),
        driver_name: attr_string(driver, "name"),
        driver_type: attr_string(driver, "type"),
        source: source_view(el),
        auth: auth_view(el),
        target_dev: attr_string(target, "dev"),
        target_bus: attr_string(target, "bus"),
        alias: user_alias(el).map(str::to_string),
        live_alias,
        serial,
        boot_order: boot_order(el),
        readonly: el.child("readonly").is_some(),
        iotune: iotune_view(el),
    }
}

/// The view of a lone `<interface>` element (e.g. one being attached).
pub fn interface_of(el: &Element) -> InterfaceDef {
    interface_view(0, el, None)
}

pub(super) fn interface_view(
    index: usize,
    el: &Element,
    live_alias: Option<String>,
) -> InterfaceDef {
    let vport = el.child("virtualport");
    InterfaceDef {
        index,
        iface_type: el.attr("type").unwrap_or("").to_string(),
        mac: attr_string(el.child("mac"), "address"),
        model: attr_string(el.child("model"), "type"),
        source: source_view(el),
        target_dev: attr_string(el.child("target"), "dev"),
        virtualport_type: attr_string(vport, "type"),
        interface_id: vport
            .and_then(|v| v.child("parameters"))
            .and_then(|p| p.attr("interfaceid"))
            .map(str::to_string),
        mtu: el
            .child("mtu")
            .and_then(|m| m.attr("size"))
            .and_then(|s| s.trim().parse().ok()),
        alias: user_alias(el).map(str::to_string),
        live_alias,
        boot_order: boot_order(el),
    }
}

/// Checks that an interface can be a bare-metal NIC: a DPU function plugged into Open vSwitch,
/// i.e. `type='bridge'` (an OVS bridge, `<virtualport type='openvswitch'>` or none) or
/// `type='ethernet'`. Anything else is `VIR_ERR_CONFIG_UNSUPPORTED` naming the type.
pub fn check_interface(i: &InterfaceDef) -> crate::error::VirResult<()> {
    use crate::error::VirError;
    let mac = i.mac.as_deref().unwrap_or("");
    match i.iface_type.as_str() {
        "bridge" => {
            if i.source.bridge.as_deref().is_none_or(str::is_empty) {
                return Err(VirError::xml(&format!(
                    "No <source> 'bridge' attribute specified with <interface type='bridge'/> (interface {mac})"
                )));
            }
        }
        "ethernet" => {}
        other => {
            return Err(VirError::config_unsupported(&format!(
                "interface type '{other}' is not supported on bare metal: NICs are DPU functions plugged into Open vSwitch; use type='bridge' (with <virtualport type='openvswitch'/>) or type='ethernet'"
            )))
        }
    }
    match i.virtualport_type.as_deref() {
        None | Some("openvswitch") => Ok(()),
        Some(other) => Err(VirError::config_unsupported(&format!(
            "virtualport type '{other}' is not supported (interface {mac}): only 'openvswitch'"
        ))),
    }
}

/// Disk target name prefixes libvirt understands, with the bus each implies.
const DISK_PREFIXES: &[(&str, &str)] = &[
    ("xvd", "xen"),
    ("ubd", "uml"),
    ("fd", "fdc"),
    ("hd", "ide"),
    ("vd", "virtio"),
    ("sd", "scsi"),
];

/// Splits a disk target name such as `vdb` or `sdaa` into its prefix and
/// zero-based index (`a`=0 … `z`=25, `aa`=26 …), like libvirt's
/// `virDiskNameParse`. A trailing partition number is allowed and ignored.
pub fn disk_name_index(name: &str) -> Option<(&'static str, usize)> {
    let (prefix, rest) = DISK_PREFIXES
        .iter()
        .find_map(|(p, _)| name.strip_prefix(p).map(|r| (*p, r)))?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 || letters > 6 {
        return None;
    }
    let (alpha, digits) = rest.split_at(letters);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut idx: usize = 0;
    for (i, b) in alpha.bytes().enumerate() {
        if i > 0 {
            idx = (idx + 1) * 26;
        }
        idx += usize::from(b - b'a');
    }
    Some((prefix, idx))
}

/// The bus libvirt infers from a disk target name's prefix.
pub fn bus_for_disk_name(name: &str) -> Option<&'static str> {
    DISK_PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, bus)| *bus)
}

/// Parses a MAC address (`aa:bb:cc:dd:ee:ff`, one or two hex digits per
/// octet).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for slot in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Formats a MAC address the way libvirt does (lowercase, two digits).
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Reads `<address type='drive' controller bus target unit>` of a disk.
fn drive_address(disk: &Element) -> Option<[u32; 4]> {
    let addr = disk.child("address")?;
    if addr.attr("type") != Some("drive") {
        return None;
    }
    let num = |k: &str| -> u32 { addr.attr(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Some([num("controller"), num("bus"), num("target"), num("unit")])
}

/// The alias libvirt's QEMU driver gives a disk.
fn disk_alias(disk: &Element) -> Option<String> {
    let target = disk.child("target")?;
    let dev = target.attr("dev")?;
    let bus = target
        .attr("bus")
        .or_else(|| bus_for_disk_name(dev))
        .unwrap_or("ide");
    let idx = disk_name_index(dev).map(|(_, i)| i);
    let addr = drive_address(disk);
    let from_index = |per_controller: usize, per_bus: usize| -> Option<[u32; 4]> {
        let i = idx?;
        let c = u32::try_from(i / per_controller).ok()?;
        let rem = i % per_controller;
        let b = u32::try_from(rem / per_bus).ok()?;
        let u = u32::try_from(rem % per_bus).ok()?;
        Some([c, b, 0, u])
    };
    match bus {
        "virtio" => idx.map(|i| format!("virtio-disk{i}")),
        "scsi" => {
            let [c, b, t, u] = addr.or_else(|| from_index(7, 7))?;
            Some(format!("scsi{c}-{b}-{t}-{u}"))
        }
        "sata" => {
            let [c, b, _, u] = addr.or_else(|| from_index(6, 6))?;
            Some(format!("sata{c}-{b}-{u}"))
        }
        "ide" => {
            let [c, b, _, u] = addr.or_else(|| from_index(4, 2))?;
            Some(format!("ide{c}-{b}-{u}"))
        }
        "fdc" => {
            let [c, b, _, u] = addr.or_else(|| from_index(2, 2))?;
            Some(format!("fdc{c}-{b}-{u}"))
        }
        "usb" => idx.map(|i| format!("usb-disk{i}")),
        other => idx.map(|i| format!("{other}-disk{i}")),
    }
}

/// The alias libvirt's QEMU driver gives a controller.
fn controller_alias(ctrl: &Element, q35: bool) -> Option<String> {
    let ty = ctrl.attr("type")?;
    let index: u32 = ctrl.attr("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let alias = match ty {
        "pci" if ctrl.attr("model") == Some("pcie-root") => "pcie.0".to_string(),
        "pci" => format!("pci.{index}"),
        "usb" | "ide" if index == 0 => ty.to_string(),
        "sata" if index == 0 && q35 => "ide".to_string(),
        _ => format!("{ty}{index}"),
    };
    Some(alias)
}

/// Alias prefix for devices that are numbered in order of appearance.
fn counted_prefix(dev: &Element) -> Option<&'static str> {
    Some(match dev.name.as_str() {
        "filesystem" => "fs",
        "interface" => "net",
        "smartcard" => "smartcard",
        "serial" => "serial",
        "parallel" => "parallel",
        "console" => "console",
        "channel" => "channel",
        "input" => "input",
        "tpm" => "tpm",
        "sound" => "sound",
        "video" => "video",
        "hostdev" => "hostdev",
        "redirdev" => "redir",
        "hub" => "hub",
        "watchdog" => "watchdog",
        "memballoon" => "balloon",
        "rng" => "rng",
        "panic" => "panic",
        "shmem" => "shmem",
        "memory" => match dev.attr("model") {
            Some("nvdimm") => "nvdimm",
            Some("virtio-pmem") => "virtiopmem",
            Some("virtio-mem") => "virtiomem",
            Some("sgx-epc") => "epc",
            _ => "dimm",
        },
        "iommu" => "iommu",
        "vsock" => "vsock",
        _ => return None,
    })
}

/// Computes, for every child element of `devices`, the alias it has in
/// live XML: the user's `ua-` alias when present, otherwise the name
/// libvirt's QEMU driver would generate; `None` for elements libvirt never
/// gives an alias (emulator, graphics, audio, lease, redirfilter, nvram,
/// unknown elements, `<memballoon model='none'>`).
///
/// The result depends only on the definition, so it is the same on every
/// call.
pub fn live_aliases(devices: &Element, machine: Option<&str>) -> Vec<Option<String>> {
    let q35 = machine.is_some_and(|m| m.contains("q35"));
    let serial_count = devices.children_named("serial").count();
    let mut counters: HashMap<&'static str, usize> = HashMap::new();
    let mut console_seen = 0usize;
    let mut aliases: Vec<Option<String>> = devices
        .elements()
        .map(|dev| {
            let generated = match dev.name.as_str() {
                "disk" => disk_alias(dev),
                "controller" => controller_alias(dev, q35),
                "memballoon" if dev.attr("model") == Some("none") => None,
                "console" => {
                    let n = console_seen;
                    console_seen += 1;
                    // libvirt shows the first console, when it is the
                    // serial port's mirror, with the serial port's alias.
                    let target_type = dev.child("target").and_then(|t| t.attr("type"));
                    if n == 0 && serial_count > 0 && matches!(target_type, None | Some("serial")) {
                        Some("serial0".to_string())
                    } else {
                        Some(format!("console{n}"))
                    }
                }
                _ => counted_prefix(dev).map(|prefix| {
                    let n = counters.entry(prefix).or_insert(0);
                    let alias = format!("{prefix}{n}");
                    *n += 1;
                    alias
                }),
            };
            // An alias already in the element wins: a user `ua-` alias, or one given to the
            // device when it went live (the live definition keeps them, so they stay stable
            // across hot-plug and hot-unplug of other devices).
            match dev.child("alias").and_then(|a| a.attr("name")) {
                Some(a) => Some(a.to_string()),
                None => generated,
            }
        })
        .collect();
    // Generated names can meet (disks `sdb` and `vdb` on one bus are both disk 1, a device
    // given `virtio-disk1` when it went live): later ones take the next free suffix, so the
    // live XML always reads back. The console that mirrors the serial port keeps its alias.
    let explicit: Vec<bool> = devices.elements().map(|d| alias_of(d).is_some()).collect();
    let mut taken: std::collections::HashSet<String> = devices
        .elements()
        .filter_map(alias_of)
        .map(str::to_string)
        .collect();
    for (i, (dev, alias)) in devices.elements().zip(aliases.iter_mut()).enumerate() {
        let Some(a) = alias.as_mut() else { continue };
        let mirror = dev.name == "console" && a == "serial0";
        if explicit[i] || mirror {
            continue;
        }
        if taken.contains(a.as_str()) {
            *a = unique(a, &taken);
        }
        taken.insert(a.clone());
    }
    aliases
}

/// `base` with the smallest `-N` suffix no alias in `taken` has.
fn unique(base: &str, taken: &std::collections::HashSet<String>) -> String {
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|a| !taken.contains(a))
        .unwrap_or_else(|| base.to_string())
}

/// The alias a device hot-plugged into `devices` gets (libvirt's rule: disks are named from
/// their target, other devices take the next number after the highest in use).
pub fn hotplug_alias(devices: &Element, dev: &Element) -> Option<String> {
    if let Some(ua) = user_alias(dev) {
        return Some(ua.to_string());
    }
    if dev.name == "disk" {
        let a = disk_alias(dev)?;
        let taken: std::collections::HashSet<String> = devices
            .elements()
            .filter_map(alias_of)
            .map(str::to_string)
            .collect();
        // Named from the target, unless another device has that name already.
        return Some(if taken.contains(&a) {
            unique(&a, &taken)
        } else {
            a
        });
    }
    let prefix = counted_prefix(dev)?;
    let next = devices
        .elements()
        .filter_map(|d| d.child("alias").and_then(|a| a.attr("name")))
        .filter_map(|a| a.strip_prefix(prefix))
        .filter_map(|n| n.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0);
    Some(format!("{prefix}{next}"))
}

/// The alias of a device element, whatever its kind.
pub fn alias_of(dev: &Element) -> Option<&str> {
    dev.child("alias").and_then(|a| a.attr("name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        assert_eq!(disk_name_index("vda"), Some(("vd", 0)));
        assert_eq!(disk_name_index("vdz"), Some(("vd", 25)));
        assert_eq!(disk_name_index("sdaa"), Some(("sd", 26)));
        assert_eq!(disk_name_index("hdba"), Some(("hd", 52)));
        assert_eq!(disk_name_index("xvdb"), Some(("xvd", 1)));
        assert_eq!(disk_name_index("vda1"), Some(("vd", 0)));
        assert_eq!(disk_name_index("vd"), None);
        assert_eq!(disk_name_index("nvme0n1"), None);
        assert_eq!(disk_name_index("vdA"), None);
        assert_eq!(disk_name_index("vda1x"), None);
        assert_eq!(bus_for_disk_name("sdc"), Some("scsi"));
        assert_eq!(bus_for_disk_name("hda"), Some("ide"));
        assert_eq!(bus_for_disk_name("vdb"), Some("virtio"));
        assert_eq!(bus_for_disk_name("foo"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:0:A:bb:cc"),
            Some([0x52, 0x54, 0, 0x0a, 0xbb, 0xcc])
        );
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0x0a, 0xbb, 0xcc]),
            "52:54:00:0a:bb:cc"
        );
        for bad in [
            "",
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:cc:dd",
            "52-54-00-aa-bb-cc",
            "g2:54:00:aa:bb:cc",
            "523:54:00:aa:bb:c",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    fn aliases_of(xml: &str, machine: Option<&str>) -> Vec<Option<String>> {
        let devices = Element::parse(xml).expect("parse");
        live_aliases(&devices, machine)
    }

    #[test]
    fn generated_aliases_follow_libvirt() {
        let xml = "<devices>\
            <emulator>/usr/bin/qemu</emulator>\
            <disk><target dev='vdb' bus='virtio'/></disk>\
            <disk><target dev='vda'/><alias name='ua-root'/></disk>\
            <disk><target dev='sdb' bus='scsi'/></disk>\
            <disk><target dev='sdc' bus='sata'/></disk>\
            <disk><target dev='hdc' bus='ide'/></disk>\
            <disk><target dev='sda' bus='scsi'/><address type='drive' controller='1' bus='0' target='2' unit='3'/></disk>\
            <controller type='pci' index='0' model='pcie-root'/>\
            <controller type='pci' index='3' model='pcie-root-port'/>\
            <controller type='usb' index='0'/>\
            <controller type='sata' index='0'/>\
            <controller type='virtio-serial' index='1'/>\
            <interface type='bridge'/><interface type='network'/>\
            <serial type='pty'/><console type='pty'/>\
            <graphics type='vnc'/>\
            <video/><input type='tablet'/><input type='keyboard'/>\
            <memballoon model='virtio'/><rng model='virtio'/>\
            <unknownthing/>\
            </devices>";
        let got = aliases_of(xml, Some("pc-q35-7.2"));
        let want: Vec<Option<String>> = [
            None,
            Some("virtio-disk1"),
            Some("ua-root"),
            Some("scsi0-0-0-1"),
            Some("sata0-0-2"),
            Some("ide0-1-0"),
            Some("scsi1-0-2-3"),
            Some("pcie.0"),
            Some("pci.3"),
            Some("usb"),
            Some("ide"),
            Some("virtio-serial1"),
            Some("net0"),
            Some("net1"),
            Some("serial0"),
            Some("serial0"),
            None,
            Some("video0"),
            Some("input0"),
            Some("input1"),
            Some("balloon0"),
            Some("rng0"),
            None,
        ]
        .into_iter()
        .map(|o| o.map(str::to_string))
        .collect();
        assert_eq!(got, want);
        // pure function of the definition
        assert_eq!(aliases_of(xml, Some("pc-q35-7.2")), got);
    }

    #[test]
    fn views_read_fields() {
        let disk = Element::parse(
            "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
             <source protocol='rbd' name='vols/v1'><host name='10.0.0.1' port='6789'/></source>\
             <auth username='cinder'><secret type='ceph' uuid='u'/></auth>\
             <target dev='vda' bus='virtio'/><serial>S1</serial><boot order='2'/><alias name='ua-x'/></disk>",
        )
        .expect("parse");
        let v = disk_view(3, &disk, Some("ua-x".into()));
        assert_eq!(v.index, 3);
        assert_eq!(v.disk_type, "network");
        assert_eq!(v.source.protocol.as_deref(), Some("rbd"));
        assert_eq!(v.source.hosts[0].port.as_deref(), Some("6789"));
        assert_eq!(
            v.auth.as_ref().and_then(|a| a.secret_uuid.as_deref()),
            Some("u")
        );
        assert_eq!(v.serial.as_deref(), Some("S1"));
        assert_eq!(v.boot_order, Some(2));
        assert_eq!(v.alias.as_deref(), Some("ua-x"));
        let nic = Element::parse(
            "<interface type='bridge'><mac address='fa:16:3e:00:00:01'/><source bridge='br-int'/>\
             <virtualport type='openvswitch'><parameters interfaceid='IID'/></virtualport>\
             <model type='virtio'/><mtu size='1442'/><target dev='tap1'/></interface>",
        )
        .expect("parse");
        let v = interface_view(0, &nic, Some("net0".into()));
        assert_eq!(v.source.bridge.as_deref(), Some("br-int"));
        assert_eq!(v.interface_id.as_deref(), Some("IID"));
        assert_eq!(v.virtualport_type.as_deref(), Some("openvswitch"));
        assert_eq!(v.mtu, Some(1442));
        assert_eq!(v.target_dev.as_deref(), Some("tap1"));
        assert_eq!(v.live_alias.as_deref(), Some("net0"));
    }
}
