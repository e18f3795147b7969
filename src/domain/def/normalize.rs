//! Parse-time validation and normalization of a domain definition, and the defaults
//! libvirt fills in (UUID, MACs, disk buses, controller indexes).

use rand::RngCore;

use super::*;

/// Largest memory size accepted, in KiB (libvirt's limit: what fits in a
/// signed 64-bit byte count).
const MAX_MEMORY_KIB: u64 = (i64::MAX as u64) >> 10;

/// Parses a `<memory>`-like element (`<memory unit='GiB'>4</memory>`) into
/// KiB, rounding up like libvirt.
fn parse_memory(el: &Element) -> Result<u64, DomainXmlError> {
    let what = &el.name;
    let text = el.text();
    let value = text.trim();
    let Ok(n) = value.parse::<u64>() else {
        return fail(format!(
            "Invalid value '{value}' for element or attribute '{what}'"
        ));
    };
    let unit = el.attr("unit").unwrap_or("").trim();
    let Some(scale) = unit_scale(unit) else {
        return fail(format!(
            "unknown suffix '{unit}' in 'unit' of element <{what}>"
        ));
    };
    let kib = n
        .checked_mul(scale)
        .map(|bytes| bytes.div_ceil(1024))
        .filter(|kib| *kib <= MAX_MEMORY_KIB);
    match kib {
        Some(kib) => Ok(kib),
        None => fail(format!(
            "size '{value}' {unit} of element <{what}> is too large"
        )),
    }
}

/// Rewrites a memory element as libvirt prints it: `<x unit='KiB'>N</x>`.
fn normalize_memory_element(el: &mut Element, kib: u64) {
    el.remove_attr("unit");
    el.attrs.push(("unit".to_string(), "KiB".to_string()));
    el.set_text(kib.to_string());
}

impl DomainDef {
    /// Deterministic validation and normalization of everything metalvirt
    /// interprets.
    pub(super) fn normalize(&mut self) -> Result<(), DomainXmlError> {
        let root = &mut self.root;
        if root.name != "domain" {
            return fail(format!(
                "expecting root element of 'domain', not '{}'",
                root.name
            ));
        }
        match root.attr("type") {
            None => return fail("missing domain type attribute"),
            Some(t) if ACCEPTED_VIRT_TYPES.contains(&t) => {}
            Some(t) if OTHER_LIBVIRT_VIRT_TYPES.contains(&t) => {
                return fail(format!(
                    "unsupported domain type '{t}' in <domain type>: metalvirt serves 'kvm' and 'qemu' domains"
                ));
            }
            Some(t) => return fail(format!("invalid domain type {t}")),
        }
        // The id is live state, never part of a definition.
        root.remove_attr("id");
        // Stray text between the elements of <domain> and <devices> means
        // nothing (libvirt drops it too).
        root.children.retain(|n| !matches!(n, Node::Text(_)));
        if let Some(devices) = root.child_mut("devices") {
            devices.children.retain(|n| !matches!(n, Node::Text(_)));
        }
        if let Some(pos) = root.attrs.iter().position(|(k, _)| k == "type") {
            let ty = root.attrs.remove(pos);
            root.attrs.insert(0, ty);
        }
        for single in SINGLETONS {
            if root.children_named(single).nth(1).is_some() {
                return fail(format!(
                    "element <{single}> must appear only once in <domain>"
                ));
            }
        }
        root.reorder_children(DOMAIN_ORDER);

        self.normalize_name()?;
        self.normalize_uuid()?;
        self.normalize_title()?;
        self.check_metalvirt_metadata()?;
        self.normalize_memory()?;
        self.normalize_vcpu()?;
        self.normalize_os()?;
        self.normalize_devices()?;
        self.add_libvirt_defaults();
        Ok(())
    }

    /// Elements libvirt always prints, with its defaults.
    fn add_libvirt_defaults(&mut self) {
        for (name, default) in [
            ("on_poweroff", "destroy"),
            ("on_reboot", "restart"),
            ("on_crash", "destroy"),
        ] {
            if self.root.child(name).is_none() {
                self.root
                    .insert_ordered(Element::new(name).with_text(default), DOMAIN_ORDER);
            }
        }
        if self.root.child("clock").is_none() {
            self.root.insert_ordered(
                Element::new("clock").with_attr("offset", "utc"),
                DOMAIN_ORDER,
            );
        }
    }

    fn normalize_name(&mut self) -> Result<(), DomainXmlError> {
        let Some(name_el) = self.root.child_mut("name") else {
            return fail("missing name information: <name> element is required");
        };
        if name_el.has_elements() {
            return fail("missing name information: <name> must contain text only");
        }
        let name = name_el.text();
        if name.trim().is_empty() {
            return fail("missing name information: <name> is empty");
        }
        if name.contains('/') {
            return fail(format!("name {name} cannot contain '/'"));
        }
        if name.contains('\n') {
            return fail(format!("name {name} cannot contain newlines"));
        }
        name_el.set_text(name);
        Ok(())
    }

    fn normalize_uuid(&mut self) -> Result<(), DomainXmlError> {
        let Some(uuid_el) = self.root.child_mut("uuid") else {
            return Ok(());
        };
        let text = uuid_el.text();
        if text.trim().is_empty() && !uuid_el.has_elements() {
            // libvirt treats an empty <uuid/> like a missing one
            uuid_el.set_text("");
            return Ok(());
        }
        match parse_uuid(&text) {
            Some(u) if !uuid_el.has_elements() => {
                uuid_el.set_text(u.hyphenated().to_string());
                Ok(())
            }
            _ => fail(format!("malformed uuid element: '{}'", text.trim())),
        }
    }

    fn normalize_title(&mut self) -> Result<(), DomainXmlError> {
        if let Some(title) = self.root.child_mut("title") {
            let text = title.text();
            if text.contains('\n') {
                return fail("Domain title can't contain newlines");
            }
            title.set_text(text);
        }
        if let Some(desc) = self.root.child_mut("description") {
            let text = desc.text();
            desc.set_text(text);
        }
        Ok(())
    }

    pub(super) fn check_metalvirt_metadata(&self) -> Result<(), DomainXmlError> {
        let Some(metadata) = self.root.child("metadata") else {
            return Ok(());
        };
        let ancestors = [&self.root, metadata];
        let mut seen = false;
        for el in metadata.elements() {
            if element_namespace(el, &ancestors) != Some(METALVIRT_NS) || el.local_name() != "node"
            {
                continue;
            }
            if seen {
                return fail(format!("more than one <{}> element in <metadata>", el.name));
            }
            seen = true;
            match el.attr("name") {
                Some(n) if !n.trim().is_empty() => {}
                _ => {
                    return fail(format!(
                        "missing or empty 'name' attribute of <{}> in <metadata>",
                        el.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn normalize_memory(&mut self) -> Result<(), DomainXmlError> {
        let missing = "Memory size must be specified via <memory> or in the <numa> configuration";
        let Some(mem_el) = self.root.child_mut("memory") else {
            return fail(missing);
        };
        let memory = parse_memory(mem_el)?;
        if memory == 0 {
            return fail(missing);
        }
        normalize_memory_element(mem_el, memory);
        let current = match self.root.child_mut("currentMemory") {
            Some(cur_el) => {
                let cur = parse_memory(cur_el)?;
                if cur > memory {
                    return fail(format!(
                        "current memory '{cur}k' exceeds maximum '{memory}k' (<currentMemory> must not be larger than <memory>)"
                    ));
                }
                let cur = if cur == 0 { memory } else { cur };
                normalize_memory_element(cur_el, cur);
                None
            }
            None => Some(memory),
        };
        if let Some(cur) = current {
            let mut el = Element::new("currentMemory");
            normalize_memory_element(&mut el, cur);
            self.root.insert_ordered(el, DOMAIN_ORDER);
        }
        Ok(())
    }

    fn normalize_vcpu(&mut self) -> Result<(), DomainXmlError> {
        if self.root.child("vcpu").is_none() {
            let el = Element::new("vcpu")
                .with_attr("placement", "static")
                .with_text("1");
            self.root.insert_ordered(el, DOMAIN_ORDER);
            return Ok(());
        }
        let Some(vcpu) = self.root.child_mut("vcpu") else {
            return Ok(());
        };
        let text = vcpu.text();
        let Ok(max) = text.trim().parse::<u32>() else {
            return fail(format!(
                "maximum vcpus count must be an integer: <vcpu>{}</vcpu>",
                text.trim()
            ));
        };
        if max == 0 || vcpu.has_elements() {
            return fail("maximum vcpus count must be greater than 0 in <vcpu>");
        }
        let current = match vcpu.attr("current") {
            None => None,
            Some(c) => match c.trim().parse::<u32>() {
                Ok(0) | Err(_) => {
                    return fail(format!(
                        "Invalid value for attribute 'current' in element 'vcpu': '{c}'."
                    ));
                }
                Ok(n) if n > max => {
                    return fail(
                        "maximum vCPU count must not be less than current vCPU count (<vcpu current>)",
                    );
                }
                Ok(n) if n == max => None,
                Ok(n) => Some(n),
            },
        };
        let placement = vcpu.attr("placement").unwrap_or("static").to_string();
        if placement != "static" && placement != "auto" {
            return fail(format!(
                "Invalid value for attribute 'placement' in element 'vcpu': '{placement}'."
            ));
        }
        let cpuset = vcpu.attr("cpuset").map(str::to_string);
        let rest: Vec<(String, String)> = vcpu
            .attrs
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "placement" | "cpuset" | "current"))
            .cloned()
            .collect();
        vcpu.attrs.clear();
        vcpu.attrs.push(("placement".to_string(), placement));
        if let Some(cpuset) = cpuset {
            vcpu.attrs.push(("cpuset".to_string(), cpuset));
        }
        if let Some(current) = current {
            vcpu.attrs
                .push(("current".to_string(), current.to_string()));
        }
        vcpu.attrs.extend(rest);
        vcpu.set_text(max.to_string());
        Ok(())
    }

    fn normalize_os(&mut self) -> Result<(), DomainXmlError> {
        let Some(ty) = self
            .root
            .child_mut("os")
            .and_then(|os| os.child_mut("type"))
        else {
            return fail("an os <type> must be specified");
        };
        let text = ty.text();
        let os_type = text.trim();
        if os_type != "hvm" {
            if OTHER_OS_TYPES.contains(&os_type) {
                return fail(format!(
                    "unsupported OS type '{os_type}' in <os><type>: metalvirt only runs 'hvm' guests"
                ));
            }
            return fail(format!("unknown OS type '{os_type}' in <os><type>"));
        }
        let arch = ty
            .remove_attr("arch")
            .unwrap_or_else(|| "x86_64".to_string());
        let machine = ty.remove_attr("machine");
        let mut attrs = vec![("arch".to_string(), arch)];
        if let Some(m) = machine {
            attrs.push(("machine".to_string(), m));
        }
        attrs.append(&mut ty.attrs);
        ty.attrs = attrs;
        ty.set_text("hvm");
        Ok(())
    }

    /// Parse-time device normalization: libvirt's ordering, only `ua-`
    /// aliases kept (moved before `<address>`), generated interface target
    /// names dropped.
    fn normalize_devices(&mut self) -> Result<(), DomainXmlError> {
        let live = self.live;
        let Some(devices) = self.root.child_mut("devices") else {
            return Ok(());
        };
        devices.reorder_children(DEVICE_ORDER);
        for dev in devices.elements_mut() {
            normalize_device(dev, live)?;
        }
        Ok(())
    }

    /// Fills the defaults libvirt fills at define time and re-validates the
    /// devices: a random UUID when missing, `52:54:00:xx:xx:xx` MACs for
    /// interfaces without one, disk buses inferred from the target name,
    /// missing controller indexes. Idempotent; call it again after editing
    /// devices.
    pub fn fill_defaults(&mut self) -> Result<(), DomainXmlError> {
        self.fill_defaults_with(&mut rand::rng())
    }

    /// [`DomainDef::fill_defaults`] with an explicit random source.
    pub fn fill_defaults_with<R: RngCore + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<(), DomainXmlError> {
        self.fill_uuid(rng);
        self.check_macs()?;
        self.fill_macs(rng);
        self.fill_disk_buses()?;
        self.fill_controller_indexes()?;
        self.check_aliases()?;
        Ok(())
    }

    fn fill_uuid<R: RngCore + ?Sized>(&mut self, rng: &mut R) {
        let has_uuid = self
            .root
            .child("uuid")
            .is_some_and(|u| !u.text().trim().is_empty());
        if has_uuid {
            return;
        }
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let text = id.hyphenated().to_string();
        match self.root.child_mut("uuid") {
            Some(u) => u.set_text(text),
            None => self
                .root
                .insert_ordered(Element::new("uuid").with_text(text), DOMAIN_ORDER),
        }
    }

    fn check_macs(&mut self) -> Result<(), DomainXmlError> {
        let Some(devices) = self.root.child_mut("devices") else {
            return Ok(());
        };
        for nic in devices.children_named_mut("interface") {
            let Some(mac_el) = nic.child_mut("mac") else {
                continue;
            };
            let Some(text) = mac_el.attr("address") else {
                return fail("missing 'address' attribute of interface <mac>");
            };
            let Some(mac) = devices::parse_mac(text.trim()) else {
                return fail(format!(
                    "unable to parse mac address '{text}' in interface <mac>"
                ));
            };
            if mac[0] & 1 == 1 {
                return fail(format!(
                    "expected unicast mac address, found multicast '{text}' in interface <mac>"
                ));
            }
            mac_el.set_attr("address", devices::format_mac(&mac));
        }
        Ok(())
    }

    fn fill_macs<R: RngCore + ?Sized>(&mut self, rng: &mut R) {
        let Some(devices) = self.root.child_mut("devices") else {
            return;
        };
        let mut used: Vec<String> = devices
            .children_named("interface")
            .filter_map(|n| n.child("mac").and_then(|m| m.attr("address")))
            .map(str::to_string)
            .collect();
        for nic in devices.children_named_mut("interface") {
            if nic.child("mac").is_some() {
                continue;
            }
            let mac = loop {
                let mut tail = [0u8; 3];
                rng.fill_bytes(&mut tail);
                let mac = devices::format_mac(&[0x52, 0x54, 0x00, tail[0], tail[1], tail[2]]);
                if !used.contains(&mac) {
                    break mac;
                }
            };
            used.push(mac.clone());
            nic.children.insert(
                0,
                Node::Element(Element::new("mac").with_attr("address", mac)),
            );
        }
    }

    fn fill_disk_buses(&mut self) -> Result<(), DomainXmlError> {
        let Some(devices) = self.root.child_mut("devices") else {
            return Ok(());
        };
        let mut targets: Vec<(String, String)> = Vec::new();
        for (n, disk) in devices.children_named_mut("disk").enumerate() {
            // libvirt always formats both attributes (virsh domblklist --details needs them).
            if disk.attr("type").is_none() {
                disk.set_attr_at(0, "type", "file");
            }
            if disk.attr("device").is_none() {
                let pos = disk
                    .attrs
                    .iter()
                    .position(|(k, _)| k == "type")
                    .map_or(0, |i| i + 1);
                disk.set_attr_at(pos, "device", "disk");
            }
            let source = disk_source_text(disk);
            let floppy = disk.attr("device") == Some("floppy");
            let has_address = disk.child("address").is_some();
            let Some(target) = disk.child_mut("target") else {
                return fail(format!(
                    "missing target information for device <disk> #{} (source '{source}'): <target dev> is required",
                    n + 1
                ));
            };
            let Some(dev) = target.attr("dev").map(str::to_string) else {
                return fail(format!(
                    "missing target information for device <disk> #{} (source '{source}'): <target dev> is required",
                    n + 1
                ));
            };
            if dev.trim().is_empty() {
                return fail(format!(
                    "missing target information for device <disk> #{} (source '{source}'): <target dev> is empty",
                    n + 1
                ));
            }
            if target.attr("bus").is_none() {
                let bus = if floppy {
                    "fdc"
                } else {
                    devices::bus_for_disk_name(&dev).unwrap_or("ide")
                };
                let pos = target
                    .attrs
                    .iter()
                    .position(|(k, _)| k == "dev")
                    .map_or(target.attrs.len(), |i| i + 1);
                target.set_attr_at(pos, "bus", bus);
            }
            if devices::disk_name_index(&dev).is_none() && !has_address {
                return fail(format!(
                    "Unknown disk name '{dev}' and no address specified (<disk> <target dev>)"
                ));
            }
            if let Some((_, other)) = targets.iter().find(|(t, _)| *t == dev) {
                return fail(format!(
                    "target '{dev}' duplicated for disk sources '{other}' and '{source}'"
                ));
            }
            targets.push((dev, source));
        }
        Ok(())
    }

    fn fill_controller_indexes(&mut self) -> Result<(), DomainXmlError> {
        let Some(devices) = self.root.child_mut("devices") else {
            return Ok(());
        };
        let mut used: Vec<(String, u32)> = Vec::new();
        for ctrl in devices.children_named_mut("controller") {
            let ty = ctrl.attr("type").unwrap_or("").to_string();
            if let Some(text) = ctrl.attr("index") {
                let Ok(idx) = text.trim().parse::<u32>() else {
                    return fail(format!(
                        "Invalid value for attribute 'index' in element 'controller': '{text}'."
                    ));
                };
                if used.iter().any(|(t, i)| *t == ty && *i == idx) {
                    return fail(format!("Multiple '{ty}' controllers with index '{idx}'"));
                }
                // Kept as the number it is (libvirt formats the value it parsed): everything
                // that reads the index later (aliases, addresses) sees the same one.
                ctrl.set_attr("index", idx.to_string());
                used.push((ty, idx));
            }
        }
        for ctrl in devices.children_named_mut("controller") {
            if ctrl.attr("index").is_some() {
                continue;
            }
            let ty = ctrl.attr("type").unwrap_or("").to_string();
            let mut idx = 0u32;
            while used.iter().any(|(t, i)| *t == ty && *i == idx) {
                idx += 1;
            }
            let pos = ctrl
                .attrs
                .iter()
                .position(|(k, _)| k == "type")
                .map_or(0, |i| i + 1);
            ctrl.set_attr_at(pos, "index", idx.to_string());
            used.push((ty, idx));
        }
        Ok(())
    }

    fn check_aliases(&self) -> Result<(), DomainXmlError> {
        let Some(devices) = self.root.child("devices") else {
            return Ok(());
        };
        let mut seen: Vec<&str> = Vec::new();
        let first_serial = devices
            .children_named("serial")
            .next()
            .and_then(devices::alias_of);
        for dev in devices.elements() {
            if let Some(alias) = devices::alias_of(dev) {
                // The first console, when it mirrors the serial port, carries the serial
                // port's alias (libvirt formats it so and accepts it back).
                let mirror = dev.name == "console"
                    && Some(alias) == first_serial
                    && matches!(
                        dev.child("target").and_then(|t| t.attr("type")),
                        None | Some("serial")
                    );
                if mirror {
                    continue;
                }
                if seen.contains(&alias) {
                    return fail(format!("non unique alias detected: {alias}"));
                }
                seen.push(alias);
            }
        }
        Ok(())
    }
}

/// Parse-time normalization of one device element: only `ua-` aliases are kept (moved before
/// `<address>`) unless `keep_aliases` (live definitions keep the aliases they were given), and
/// generated interface target names are dropped.
pub(in crate::domain) fn normalize_device(
    dev: &mut Element,
    keep_aliases: bool,
) -> Result<(), DomainXmlError> {
    let alias = dev
        .child("alias")
        .and_then(|a| a.attr("name"))
        .filter(|n| keep_aliases || n.starts_with(USER_ALIAS_PREFIX))
        .map(str::to_string);
    if dev.child("alias").is_some() {
        dev.remove_children_named("alias");
        if let Some(name) = alias {
            if name.starts_with(USER_ALIAS_PREFIX)
                && (!valid_alias_name(&name) || name == USER_ALIAS_PREFIX)
            {
                return fail(format!(
                    "invalid alias name '{name}' of <{}>: only letters, digits, '_', '-' and '.' are allowed after 'ua-'",
                    dev.name
                ));
            }
            dev.insert_before_first(Element::new("alias").with_attr("name", name), &["address"]);
        }
    }
    if dev.name == "interface" && !keep_aliases {
        // Every <target> (a second one would otherwise survive to the next parse, which
        // strips it then: the definition would change when read back).
        let mut generated = false;
        for t in dev.children_named_mut("target") {
            let gen = t
                .attr("dev")
                .is_some_and(|d| GENERATED_IFNAME_PREFIXES.iter().any(|p| d.starts_with(p)));
            if gen {
                t.remove_attr("dev");
                generated = true;
            }
        }
        if generated {
            dev.retain_elements(|e| {
                !(e.name == "target" && e.attrs.is_empty() && e.children.is_empty())
            });
        }
    }
    Ok(())
}

/// A short description of a disk's source for error messages.
fn disk_source_text(disk: &Element) -> String {
    disk.child("source")
        .and_then(|s| {
            ["file", "dev", "dir", "name", "volume"]
                .iter()
                .find_map(|k| s.attr(k))
        })
        .unwrap_or("")
        .to_string()
}
