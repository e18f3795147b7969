//! Device editing of a definition — what attach, detach and update do to the XML — with
//! libvirt's device matching rules and error codes. The driver decides which definition (live
//! or persistent) an edit applies to and what the hardware does.

use super::def::{normalize_device, DomainDef};
use super::devices::{self, DEVICE_ORDER};
use super::tree::{Element, Node};
use crate::error::{VirError, VirResult};

/// Whether `name` is a device element of `<devices>`.
pub fn is_device_name(name: &str) -> bool {
    name != "emulator" && DEVICE_ORDER.contains(&name)
}

/// Device kinds a running bare-metal server can gain or lose: a disk is a volume the DPU maps,
/// an interface is a DPU function plugged into the switch.
pub fn is_hotpluggable(dev: &Element) -> bool {
    match dev.name.as_str() {
        "disk" => matches!(dev.attr("device").unwrap_or("disk"), "disk" | "lun"),
        "interface" => true,
        _ => false,
    }
}

/// Device kinds a persistent definition takes through attach and gives up through detach.
const CONFIG_KINDS: &[&str] = &[
    "disk",
    "interface",
    "controller",
    "serial",
    "parallel",
    "console",
    "channel",
    "input",
    "rng",
    "watchdog",
    "sound",
];

/// Device kinds that need the host to share its own hardware or memory with the guest:
/// attaching one to a bare-metal server's definition would be a lie.
const HOST_BOUND_KINDS: &[&str] = &[
    "hostdev",
    "memory",
    "shmem",
    "redirdev",
    "filesystem",
    "vsock",
];

/// Whether a persistent `op` ("attach" or "detach") of `dev` is allowed: libvirt's refusal
/// (`VIR_ERR_OPERATION_UNSUPPORTED`) for kinds it does not edit, `VIR_ERR_CONFIG_UNSUPPORTED`
/// for attaching host-bound kinds.
pub fn check_config_change(dev: &Element, op: &str) -> VirResult<()> {
    let kind = dev.name.as_str();
    if CONFIG_KINDS.contains(&kind) {
        return Ok(());
    }
    if HOST_BOUND_KINDS.contains(&kind) {
        if op == "detach" {
            return Ok(());
        }
        return Err(VirError::config_unsupported(&format!(
            "a <{kind}> device shares the host's own hardware or memory with the guest, which a bare-metal server cannot do"
        )));
    }
    Err(VirError::operation_unsupported(&format!(
        "persistent {op} of device '{kind}' is not supported"
    )))
}

/// Parses the XML of one device (`virDomainDeviceDefParse`). For attach and update
/// (`keep_aliases` false) only `ua-` aliases are kept, as libvirt does; for detach the
/// alias is kept whatever it is, because it is used for matching.
pub fn parse_device(xml: &str, keep_aliases: bool) -> VirResult<Element> {
    // A device sits under <domain><devices>: the whole domain stays within the limits.
    let mut el = Element::parse_at(xml, 3).map_err(|e| VirError::xml(&e.to_string()))?;
    if !is_device_name(&el.name) {
        return Err(
            VirError::config_unsupported(&format!("unknown device type '{}'", el.name))
                .in_domain(crate::error::from::DOMAIN),
        );
    }
    normalize_device(&mut el, keep_aliases).map_err(|e| VirError::xml(&e.to_string()))?;
    if el.name == "interface" {
        if let Some(mac) = el.child_mut("mac") {
            let text = mac.attr("address").unwrap_or("").to_string();
            let parsed = devices::parse_mac(text.trim()).ok_or_else(|| {
                VirError::xml(&format!(
                    "unable to parse mac address '{text}' in interface <mac>"
                ))
            })?;
            mac.set_attr("address", devices::format_mac(&parsed));
        }
    }
    Ok(el)
}

fn target_dev(dev: &Element) -> Option<&str> {
    dev.child("target").and_then(|t| t.attr("dev"))
}

fn disk_source(dev: &Element) -> String {
    dev.child("source")
        .and_then(|s| {
            ["file", "dev", "dir", "name", "volume"]
                .iter()
                .find_map(|k| s.attr(k))
        })
        .unwrap_or("<null>")
        .to_string()
}

fn mac_of(dev: &Element) -> Option<&str> {
    dev.child("mac").and_then(|m| m.attr("address"))
}

/// A device reduced to what identifies it for structural comparison: no alias, no address,
/// and with `live`, no interface target (the host-side name a running interface was given).
pub fn identity(dev: &Element, live: bool) -> String {
    let mut d = dev.clone();
    d.remove_children_named("alias");
    d.remove_children_named("address");
    if live && d.name == "interface" {
        d.remove_children_named("target");
    }
    d.to_xml()
}

impl DomainDef {
    /// The device elements, in order (indexes match [`super::DiskDef::index`]).
    pub fn device_elements(&self) -> Vec<&Element> {
        self.root()
            .child("devices")
            .map(|d| d.elements().collect())
            .unwrap_or_default()
    }

    /// The device at `index`.
    pub fn device(&self, index: usize) -> Option<&Element> {
        self.root()
            .child("devices")
            .and_then(|d| d.elements().nth(index))
    }

    /// Index of the device carrying `alias`.
    pub fn find_alias(&self, alias: &str) -> Option<usize> {
        self.device_elements()
            .iter()
            .position(|d| devices::alias_of(d) == Some(alias))
    }

    fn find_disk_target(&self, target: &str) -> Option<usize> {
        self.device_elements()
            .iter()
            .position(|d| d.name == "disk" && target_dev(d) == Some(target))
    }

    /// Adds a device. Refuses a disk target, MAC address or alias already in use (libvirt's
    /// texts; `live` selects the live attach wording), fills defaults (MAC, bus) and, in a live
    /// definition, gives the device its alias. Returns the new device's index.
    pub fn insert_device(&mut self, dev: Element, live: bool) -> VirResult<usize> {
        match dev.name.as_str() {
            "disk" => {
                if let Some(t) = target_dev(&dev) {
                    if let Some(i) = self.find_disk_target(t) {
                        // libvirt's two wordings: the config check, and the live one that
                        // names both sources.
                        return Err(if live {
                            let src = |d: &Element| disk_source(d);
                            let old = self.device(i).map(src).unwrap_or_default();
                            VirError::xml(&format!(
                                "target '{t}' duplicated for disk sources '{old}' and '{}'",
                                src(&dev)
                            ))
                        } else {
                            VirError::operation_invalid(&format!("target {t} already exists"))
                        });
                    }
                }
            }
            "interface" => {
                if let Some(m) = mac_of(&dev) {
                    if self
                        .device_elements()
                        .iter()
                        .any(|d| d.name == "interface" && mac_of(d) == Some(m))
                    {
                        // libvirt would accept it; here the MAC names the DPU function.
                        return Err(VirError::operation_invalid(&format!(
                            "an interface with MAC address {m} already exists"
                        )));
                    }
                }
            }
            _ => {}
        }
        if let Some(a) = devices::alias_of(&dev) {
            if self.find_alias(a).is_some() {
                return Err(VirError::config_unsupported(&format!(
                    "non unique alias detected: {a}"
                )));
            }
        }
        let index = {
            let root = self.root_mut();
            if root.child("devices").is_none() {
                root.insert_ordered(Element::new("devices"), super::DOMAIN_ORDER);
            }
            let devs = root
                .child_mut("devices")
                .ok_or_else(|| VirError::internal("definition lost its <devices>"))?;
            insert_at(devs, dev)
        };
        self.fill_defaults()
            .map_err(|e| VirError::xml(&e.to_string()))?;
        if self.is_live() {
            let devs = self
                .root_mut()
                .child_mut("devices")
                .ok_or_else(|| VirError::internal("definition lost its <devices>"))?;
            let alias = {
                let new = devs
                    .elements()
                    .nth(index)
                    .ok_or_else(|| VirError::internal("inserted device vanished"))?;
                if devices::alias_of(new).is_some() {
                    None
                } else {
                    devices::hotplug_alias(devs, new)
                }
            };
            if let (Some(alias), Some(new)) = (alias, devs.elements_mut().nth(index)) {
                new.insert_before_first(
                    Element::new("alias").with_attr("name", alias),
                    &["address"],
                );
            }
        }
        Ok(index)
    }

    /// Sets the `<target dev>` of the interface at `index` (the host-side device it got).
    pub fn set_interface_target(&mut self, index: usize, dev: &str) {
        let Some(devs) = self.root_mut().child_mut("devices") else {
            return;
        };
        let Some(nic) = devs.elements_mut().nth(index) else {
            return;
        };
        match nic.child_mut("target") {
            Some(t) => t.set_attr("dev", dev),
            None => nic.insert_before_first(
                Element::new("target").with_attr("dev", dev),
                &["model", "driver", "alias", "address"],
            ),
        }
    }

    /// Removes and returns the device at `index`.
    pub fn remove_device(&mut self, index: usize) -> Option<Element> {
        let devs = self.root_mut().child_mut("devices")?;
        let pos = child_position(devs, index)?;
        match devs.children.remove(pos) {
            Node::Element(e) => Some(e),
            _ => None,
        }
    }

    /// Replaces the device at `index` (the old one's alias is kept in a live definition).
    pub fn replace_device(&mut self, index: usize, mut dev: Element) -> VirResult<()> {
        let live = self.is_live();
        let devs = self
            .root_mut()
            .child_mut("devices")
            .ok_or_else(|| VirError::internal("definition has no <devices>"))?;
        let pos = child_position(devs, index)
            .ok_or_else(|| VirError::internal("device index out of range"))?;
        if let Some(Node::Element(old)) = devs.children.get(pos) {
            if live && devices::alias_of(&dev).is_none() {
                if let Some(a) = devices::alias_of(old) {
                    dev.insert_before_first(
                        Element::new("alias").with_attr("name", a),
                        &["address"],
                    );
                }
            }
        }
        devs.children[pos] = Node::Element(dev);
        self.fill_defaults()
            .map_err(|e| VirError::xml(&e.to_string()))
    }

    /// Finds the device `dev` designates, as libvirt's detach does: a disk by its target
    /// (or, without one, its alias); an interface by MAC address, alias and, when no MAC is
    /// given, type; anything else by its whole content (alias and address aside).
    /// `live` selects the wording libvirt uses for a missing disk.
    pub fn find_device(&self, dev: &Element, live: bool) -> VirResult<usize> {
        let all = self.device_elements();
        match dev.name.as_str() {
            "disk" => {
                if let Some(t) = target_dev(dev) {
                    return self.find_disk_target(t).ok_or_else(|| {
                        VirError::device_missing(&if live {
                            format!("disk {t} not found")
                        } else {
                            format!("no target device {t}")
                        })
                    });
                }
                if let Some(a) = devices::alias_of(dev) {
                    return all
                        .iter()
                        .position(|d| d.name == "disk" && devices::alias_of(d) == Some(a))
                        .ok_or_else(|| {
                            VirError::device_missing(&format!("no disk with alias {a}"))
                        });
                }
                Err(VirError::xml(
                    "missing target information for device <disk>: <target dev> is required",
                ))
            }
            "interface" => self.find_interface(dev),
            kind => {
                let want = identity(dev, false);
                let mut hits = all
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.name == kind && identity(d, false) == want)
                    .map(|(i, _)| i);
                hits.next().ok_or_else(|| {
                    VirError::device_missing(&format!("matching {kind} device not found"))
                })
            }
        }
    }

    /// `virDomainNetFindIdx`, plus the type when the MAC address is not given.
    fn find_interface(&self, dev: &Element) -> VirResult<usize> {
        let mac = mac_of(dev);
        let alias = devices::alias_of(dev);
        let ty = dev.attr("type");
        let mut found: Option<usize> = None;
        for (i, d) in self.device_elements().iter().enumerate() {
            if d.name != "interface" {
                continue;
            }
            if mac.is_some() && mac_of(d) != mac {
                continue;
            }
            if mac.is_none() && ty.is_some() && d.attr("type") != ty {
                continue;
            }
            if alias.is_some() && devices::alias_of(d) != alias {
                continue;
            }
            if found.is_some() {
                return Err(VirError::operation_failed(&match mac {
                    Some(m) => format!("multiple devices matching MAC address {m} found"),
                    None => "multiple matching devices found".to_string(),
                }));
            }
            found = Some(i);
        }
        found.ok_or_else(|| {
            VirError::device_missing(&format!(
                "no device found at address '(<null>)' matching MAC address '{}' and alias '{}'",
                mac.unwrap_or("(<null>)"),
                alias.unwrap_or("(<null>)")
            ))
        })
    }
}

/// Position in `children` of the `index`-th element.
fn child_position(parent: &Element, index: usize) -> Option<usize> {
    parent
        .children
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n, Node::Element(_)))
        .nth(index)
        .map(|(i, _)| i)
}

/// Inserts a device at libvirt's place for it — disks sorted by target within their bus
/// (`virDomainDiskInsert`), everything else after the last device of its kind — and returns its
/// element index.
fn insert_at(devs: &mut Element, dev: Element) -> usize {
    let rank = |n: &str| {
        DEVICE_ORDER
            .iter()
            .position(|o| *o == n)
            .unwrap_or(DEVICE_ORDER.len())
    };
    let mine = rank(&dev.name);
    let disk_key = |d: &Element| {
        let t = target_dev(d).unwrap_or("");
        let bus = d
            .child("target")
            .and_then(|t| t.attr("bus"))
            .or_else(|| devices::bus_for_disk_name(t))
            .unwrap_or("")
            .to_string();
        (bus, devices::disk_name_index(t).map(|(_, i)| i))
    };
    let new_key = (dev.name == "disk").then(|| disk_key(&dev));
    let elems: Vec<&Element> = devs.elements().collect();
    let before = elems.iter().position(|e| {
        if let (Some((bus, Some(idx))), "disk") = (&new_key, e.name.as_str()) {
            let (b, i) = disk_key(e);
            if b == *bus && i.is_some_and(|i| i > *idx) {
                return true;
            }
        }
        rank(&e.name) > mine
    });
    match before.and_then(|k| child_position(devs, k).map(|p| (k, p))) {
        Some((k, pos)) => {
            devs.children.insert(pos, Node::Element(dev));
            k
        }
        None => {
            let k = elems.len();
            devs.push(dev);
            k
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOM: &str = "<domain type='kvm'><name>d</name><memory>1024</memory>\
        <os><type>hvm</type></os><devices>\
        <disk type='network' device='disk'><source protocol='rbd' name='p/a'/><target dev='vda' bus='virtio'/></disk>\
        <disk type='network' device='disk'><source protocol='rbd' name='p/c'/><target dev='vdc' bus='virtio'/><alias name='ua-c'/></disk>\
        <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-int'/></interface>\
        <serial type='pty'/></devices></domain>";

    fn live() -> DomainDef {
        let mut d = DomainDef::parse(DOM).unwrap();
        d.make_live();
        d
    }

    fn dev(xml: &str) -> Element {
        parse_device(xml, false).unwrap()
    }

    #[test]
    fn parse_refuses_what_is_not_a_device() {
        let e = parse_device("<domain/>", false).unwrap_err();
        assert_eq!(e.code, crate::error::code::CONFIG_UNSUPPORTED);
        assert!(e.message.contains("unknown device type 'domain'"), "{e}");
        assert!(parse_device("<disk", false).is_err());
        let e = parse_device(
            "<interface type='bridge'><mac address='zz'/></interface>",
            false,
        )
        .unwrap_err();
        assert!(
            e.message.contains("unable to parse mac address 'zz'"),
            "{e}"
        );
        // generated aliases are dropped for attach, kept for detach
        let x = "<disk><target dev='vdb'/><alias name='virtio-disk1'/></disk>";
        assert!(devices::alias_of(&parse_device(x, false).unwrap()).is_none());
        assert_eq!(
            devices::alias_of(&parse_device(x, true).unwrap()),
            Some("virtio-disk1")
        );
    }

    #[test]
    fn live_insert_sorts_disks_and_names_devices() {
        let mut d = live();
        let i = d
            .insert_device(dev("<disk type='network'><source protocol='rbd' name='p/b'/><target dev='vdb'/></disk>"), true)
            .unwrap();
        assert_eq!(i, 1, "vdb goes between vda and vdc");
        let b = d.device(1).unwrap();
        assert_eq!(devices::alias_of(b), Some("virtio-disk1"));
        assert_eq!(b.child("target").unwrap().attr("bus"), Some("virtio"));
        let n = d
            .insert_device(
                dev("<interface type='bridge'><source bridge='br-int'/></interface>"),
                true,
            )
            .unwrap();
        let nic = d.device(n).unwrap();
        assert_eq!(devices::alias_of(nic), Some("net1"));
        assert!(mac_of(nic).unwrap().starts_with("52:54:00:"));
        // removing net0 does not rename net1
        let net0 = d.find_alias("net0").unwrap();
        d.remove_device(net0).unwrap();
        assert!(d.find_alias("net1").is_some());
        let n = d
            .insert_device(dev("<interface type='ethernet'/>"), true)
            .unwrap();
        assert_eq!(devices::alias_of(d.device(n).unwrap()), Some("net2"));
        // the persistent form of a live definition keeps only user aliases
        let inactive = d.to_xml(&crate::domain::FormatOpts::inactive());
        assert!(
            inactive.contains("ua-c") && !inactive.contains("virtio-disk"),
            "{inactive}"
        );
        let again =
            DomainDef::parse_live(&d.to_xml(&crate::domain::FormatOpts::default())).unwrap();
        assert!(again.find_alias("net2").is_some());
    }

    #[test]
    fn duplicates_are_refused_with_libvirt_codes() {
        let mut d = live();
        let e = d
            .insert_device(
                dev("<disk><source file='/x'/><target dev='vda'/></disk>"),
                true,
            )
            .unwrap_err();
        assert_eq!(e.code, crate::error::code::XML_ERROR);
        assert!(
            e.message
                .ends_with("target 'vda' duplicated for disk sources 'p/a' and '/x'"),
            "{e}"
        );
        let mut p = DomainDef::parse(DOM).unwrap();
        let e = p
            .insert_device(
                dev("<disk><source file='/x'/><target dev='vda'/></disk>"),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, crate::error::code::OPERATION_INVALID);
        let e = p
            .insert_device(
                dev("<disk><source file='/x'/><target dev='vdd'/><alias name='ua-c'/></disk>"),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, crate::error::code::CONFIG_UNSUPPORTED);
        assert!(e.message.contains("non unique alias detected: ua-c"), "{e}");
        let e = p
            .insert_device(
                dev("<interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>"),
                false,
            )
            .unwrap_err();
        assert!(e.message.contains("52:54:00:00:00:01"), "{e}");
        let e = p
            .insert_device(
                dev("<disk><source file='/x'/><target dev='bogus'/></disk>"),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, crate::error::code::XML_ERROR);
    }

    #[test]
    fn detach_matching_follows_libvirt() {
        let d = live();
        let x = |s: &str| parse_device(s, true).unwrap();
        assert_eq!(
            d.find_device(&x("<disk><target dev='vdc'/></disk>"), true)
                .unwrap(),
            1
        );
        assert_eq!(
            d.find_device(&x("<disk><alias name='ua-c'/></disk>"), true)
                .unwrap(),
            1
        );
        let e = d
            .find_device(&x("<disk><target dev='vdz'/></disk>"), true)
            .unwrap_err();
        assert_eq!(e.code, crate::error::code::DEVICE_MISSING);
        assert_eq!(e.message, "device not found: disk vdz not found");
        let e = d
            .find_device(&x("<disk><target dev='vdz'/></disk>"), false)
            .unwrap_err();
        assert_eq!(e.message, "device not found: no target device vdz");
        let nic = "<interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>";
        assert_eq!(d.find_device(&x(nic), true).unwrap(), 2);
        assert_eq!(
            d.find_device(&x("<interface type='bridge'/>"), true)
                .unwrap(),
            2
        );
        let e = d
            .find_device(&x("<interface type='direct'/>"), true)
            .unwrap_err();
        assert_eq!(
            e.message,
            "device not found: no device found at address '(<null>)' matching MAC address '(<null>)' and alias '(<null>)'"
        );
        let e = d
            .find_device(
                &x("<interface type='bridge'><mac address='52:54:00:00:00:09'/></interface>"),
                true,
            )
            .unwrap_err();
        assert!(
            e.message
                .contains("matching MAC address '52:54:00:00:00:09'"),
            "{e}"
        );
        let e = d
            .find_device(&x("<interface type='bridge'><mac address='52:54:00:00:00:01'/><alias name='net7'/></interface>"), true)
            .unwrap_err();
        assert!(e.message.contains("and alias 'net7'"), "{e}");
        assert_eq!(d.find_device(&x("<serial type='pty'/>"), true).unwrap(), 3);
        assert!(d.find_device(&x("<serial type='tcp'/>"), true).is_err());
    }
}
