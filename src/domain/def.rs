//! The domain definition: parse, validate, fill defaults and format
//! libvirt domain XML.
//!
//! [`DomainDef`] keeps the complete element tree the user wrote (features,
//! cpu, clock, devices of any kind, metadata from any namespace) and only
//! normalizes the parts metalvirt interprets, so that agents such as
//! OpenStack nova find in `dumpxml` what they defined.
//!
//! Choices made where libvirt and metalvirt differ (see also the module
//! docs of [`super`]):
//! - only the `kvm` and `qemu` domain types are accepted (other types libvirt
//!   knows are refused as unsupported, unknown ones as invalid);
//! - only `hvm` guests are accepted;
//! - a missing `<vcpu>` means one vCPU, as in libvirt;
//! - `<currentMemory>` larger than `<memory>` is an error (libvirt silently
//!   clamps it), `0` means "same as memory";
//! - the `<uuid>` and interface MAC addresses are generated when missing
//!   (at parse time, like libvirt);
//! - like libvirt's dumpxml, the output always has `<currentMemory>`,
//!   `<vcpu placement>`, `<os><type arch>`, `<clock>` and the three
//!   `<on_*>` lifecycle actions (filled with libvirt's defaults).

use rand::RngCore;

use super::devices::{self, DiskDef, InterfaceDef, DEVICE_ORDER, USER_ALIAS_PREFIX};
use super::tree::{Element, Node, XmlError};

/// XML namespace of metalvirt's own metadata.
pub const METALVIRT_NS: &str = "https://metalvirt.dev/xmlns/1";

/// Prefix metalvirt uses for its namespace when it writes metadata.
pub const METALVIRT_PREFIX: &str = "metalvirt";

/// Order in which libvirt formats the children of `<domain>`. Unknown
/// elements go last, in their original order.
pub const DOMAIN_ORDER: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "defaultiothread",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "bootloader",
    "bootloader_args",
    "os",
    "idmap",
    "throttlegroups",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
    "seclabel",
    "keywrap",
    "launchSecurity",
];

/// Domain types metalvirt accepts.
pub const ACCEPTED_VIRT_TYPES: &[&str] = &["kvm", "qemu"];

/// Domain types libvirt knows (accepted by its parser) but metalvirt does
/// not serve.
const OTHER_LIBVIRT_VIRT_TYPES: &[&str] = &[
    "none",
    "kqemu",
    "xen",
    "lxc",
    "uml",
    "openvz",
    "test",
    "vmware",
    "hyperv",
    "vbox",
    "phyp",
    "parallels",
    "bhyve",
    "vz",
    "hvf",
    "ch",
];

/// OS types libvirt knows besides `hvm`.
const OTHER_OS_TYPES: &[&str] = &["xen", "linux", "xenpvh", "exe", "uml"];

/// Top-level elements metalvirt interprets, which may appear only once
/// (libvirt would silently use the first one).
const SINGLETONS: &[&str] = &[
    "name",
    "uuid",
    "title",
    "description",
    "metadata",
    "memory",
    "currentMemory",
    "vcpu",
    "os",
    "devices",
];

/// Interface target names libvirt generates itself and drops from the
/// persistent definition.
const GENERATED_IFNAME_PREFIXES: &[&str] = &["vnet", "macvtap", "macvlan"];

/// Device kinds libvirt never gives an alias in live XML.
pub const UNALIASED_DEVICES: &[&str] = &[
    "emulator",
    "graphics",
    "audio",
    "lease",
    "redirfilter",
    "nvram",
    "crypto",
    "pstore",
];

/// A problem with domain XML. `Display` is the detail text; the daemon
/// reports it as libvirt's `XML error: <detail>` (VIR_ERR_XML_ERROR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainXmlError {
    /// The detail text, worded like libvirt where libvirt has a message.
    pub message: String,
}

impl DomainXmlError {
    /// Creates an error with the given detail.
    pub fn new(message: impl Into<String>) -> Self {
        DomainXmlError {
            message: message.into(),
        }
    }
}

impl From<XmlError> for DomainXmlError {
    fn from(e: XmlError) -> Self {
        DomainXmlError::new(format!("malformed XML: {e}"))
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, DomainXmlError> {
    Err(DomainXmlError::new(message))
}

/// What a running domain adds to its XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveInfo {
    /// The domain id (the `id` attribute of `<domain>`).
    pub id: i32,
    /// The node the domain is bound to; when empty, the node recorded with
    /// [`DomainDef::set_bound_node`] (or the pin) is shown.
    pub node: String,
}

/// How to format a definition (the dumpxml flags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FormatOpts {
    /// Format the live state of a running domain: `id`, generated device
    /// aliases and the bound node.
    pub live: Option<LiveInfo>,
    /// Include secrets (VIR_DOMAIN_XML_SECURE): graphics passwords.
    pub secure: bool,
    /// Format the persistent definition (VIR_DOMAIN_XML_INACTIVE): wins
    /// over `live`.
    pub inactive: bool,
}

impl FormatOpts {
    /// Options for the persistent (inactive) definition.
    pub fn inactive() -> Self {
        FormatOpts {
            live: None,
            secure: false,
            inactive: true,
        }
    }

    /// Options for the live XML of a running domain.
    pub fn live(id: i32, node: impl Into<String>) -> Self {
        FormatOpts {
            live: Some(LiveInfo {
                id,
                node: node.into(),
            }),
            secure: false,
            inactive: false,
        }
    }
}

/// A validated, normalized domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    root: Element,
    bound_node: Option<String>,
    /// A live definition: device aliases given at start or hot-plug are part of it.
    live: bool,
}

/// Bytes per unit for libvirt's scaled integers (`virScaleInteger`):
/// `b`/`bytes`, `k`/`KiB` (1024), `KB` (1000), … up to `E`; case does not
/// matter; no unit means KiB.
pub fn unit_scale(unit: &str) -> Option<u64> {
    if unit.is_empty() {
        return Some(1024);
    }
    let lower = unit.to_ascii_lowercase();
    if matches!(lower.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = lower.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    base.checked_pow(power)
}

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

/// libvirt's UUID syntax: 32 hex digits, dashes allowed between byte pairs,
/// surrounding whitespace ignored.
fn parse_uuid(text: &str) -> Option<uuid::Uuid> {
    let s = text.trim();
    let mut bytes = [0u8; 16];
    let mut digits = s.chars().filter(|c| *c != '-');
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return None;
    }
    for byte in &mut bytes {
        let hi = digits.next()?.to_digit(16)?;
        let lo = digits.next()?.to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    if digits.next().is_some() {
        return None;
    }
    // dashes may only sit between byte pairs
    let mut hex_seen = 0usize;
    for c in s.chars() {
        if c == '-' {
            if hex_seen % 2 != 0 {
                return None;
            }
        } else {
            hex_seen += 1;
        }
    }
    Some(uuid::Uuid::from_bytes(bytes))
}

/// Checks that `key` can be used as an XML namespace prefix.
fn valid_ncname(key: &str) -> bool {
    let mut chars = key.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !key.to_ascii_lowercase().starts_with("xml")
}

fn valid_alias_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Resolves the namespace URI of `el`'s name given its ancestors
/// (outermost first).
fn element_namespace<'a>(el: &'a Element, ancestors: &[&'a Element]) -> Option<&'a str> {
    let prefix = el.prefix();
    if prefix == Some("xml") {
        return Some("http://www.w3.org/XML/1998/namespace");
    }
    std::iter::once(el)
        .chain(ancestors.iter().rev().copied())
        .find_map(|e| e.namespace_decl(prefix))
        .filter(|uri| !uri.is_empty())
}

/// Prefixes used (by element or attribute names) in `el`'s subtree that
/// are not declared inside it.
fn undeclared_prefixes(el: &Element, declared: &mut Vec<String>, out: &mut Vec<String>) {
    let mark = declared.len();
    for (k, _) in &el.attrs {
        if let Some(p) = k.strip_prefix("xmlns:") {
            declared.push(p.to_string());
        } else if k == "xmlns" {
            declared.push(String::new());
        }
    }
    let mut check = |p: &str| {
        if p != "xml"
            && p != "xmlns"
            && !declared.iter().any(|d| d == p)
            && !out.iter().any(|o| o == p)
        {
            out.push(p.to_string());
        }
    };
    check(el.prefix().unwrap_or(""));
    for (k, _) in &el.attrs {
        if let Some((p, _)) = k.split_once(':') {
            check(p);
        }
    }
    for child in el.elements() {
        undeclared_prefixes(child, declared, out);
    }
    declared.truncate(mark);
}

impl DomainDef {
    /// Parses, validates and normalizes domain XML and fills defaults
    /// (random UUID and MAC addresses where missing).
    pub fn parse(xml: &str) -> Result<DomainDef, DomainXmlError> {
        Self::parse_with_rng(xml, &mut rand::rng())
    }

    /// Like [`DomainDef::parse`], drawing generated UUIDs and MACs from `rng`
    /// (for reproducible output in tests).
    pub fn parse_with_rng<R: RngCore + ?Sized>(
        xml: &str,
        rng: &mut R,
    ) -> Result<DomainDef, DomainXmlError> {
        let root = Element::parse(xml)?;
        Self::from_element_with_rng(root, rng)
    }

    /// Parses the live definition of a running domain (its status file): like
    /// [`DomainDef::parse`], but the device aliases in it are kept.
    pub fn parse_live(xml: &str) -> Result<DomainDef, DomainXmlError> {
        let mut def = DomainDef {
            root: Element::parse(xml)?,
            bound_node: None,
            live: true,
        };
        def.normalize()?;
        def.fill_defaults()?;
        Ok(def)
    }

    /// Turns a definition into the live definition of a run: every device libvirt names gets
    /// its `<alias>` written in, so aliases stay stable while devices come and go.
    pub fn make_live(&mut self) {
        self.live = true;
        let aliases = self.live_aliases();
        if let Some(devices) = self.root.child_mut("devices") {
            for (dev, alias) in devices.elements_mut().zip(aliases) {
                if let (Some(alias), None) = (alias, dev.child("alias")) {
                    dev.insert_before_first(
                        Element::new("alias").with_attr("name", alias),
                        &["address"],
                    );
                }
            }
        }
    }

    /// Whether this is a live definition (see [`DomainDef::make_live`]).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Mutable access to the tree for the device editing code of this module.
    pub(super) fn root_mut(&mut self) -> &mut Element {
        &mut self.root
    }

    /// Validates and normalizes an already parsed tree (see
    /// [`DomainDef::parse`]).
    pub fn from_element(root: Element) -> Result<DomainDef, DomainXmlError> {
        Self::from_element_with_rng(root, &mut rand::rng())
    }

    /// Like [`DomainDef::from_element`] with an explicit random source.
    pub fn from_element_with_rng<R: RngCore + ?Sized>(
        root: Element,
        rng: &mut R,
    ) -> Result<DomainDef, DomainXmlError> {
        let mut def = DomainDef {
            root,
            bound_node: None,
            live: false,
        };
        def.normalize()?;
        def.fill_defaults_with(rng)?;
        Ok(def)
    }

    /// Deterministic validation and normalization of everything metalvirt
    /// interprets.
    fn normalize(&mut self) -> Result<(), DomainXmlError> {
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

    fn check_metalvirt_metadata(&self) -> Result<(), DomainXmlError> {
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

    // ----------------------------------------------------------------
    // Accessors
    // ----------------------------------------------------------------

    /// The whole (normalized) element tree.
    pub fn root(&self) -> &Element {
        &self.root
    }

    fn child_text(&self, name: &str) -> Option<&str> {
        self.root.child(name).and_then(first_text)
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        self.child_text("name").unwrap_or("")
    }

    /// The domain UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.child_text("uuid")
            .and_then(|t| uuid::Uuid::parse_str(t).ok())
            .unwrap_or_default()
    }

    /// The domain type (`kvm` or `qemu`).
    pub fn virt_type(&self) -> &str {
        self.root.attr("type").unwrap_or("")
    }

    /// Maximum memory (`<memory>`) in KiB.
    pub fn memory_kib(&self) -> u64 {
        self.child_text("memory")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    /// Current memory (`<currentMemory>`) in KiB.
    pub fn current_memory_kib(&self) -> u64 {
        self.child_text("currentMemory")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| self.memory_kib())
    }

    /// Maximum vCPU count (`<vcpu>`).
    pub fn max_vcpus(&self) -> u32 {
        self.child_text("vcpu")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1)
    }

    /// Current vCPU count (`<vcpu current>`, default the maximum).
    pub fn current_vcpus(&self) -> u32 {
        self.root
            .child("vcpu")
            .and_then(|v| v.attr("current"))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| self.max_vcpus())
    }

    fn os_type_el(&self) -> Option<&Element> {
        self.root.child("os").and_then(|os| os.child("type"))
    }

    /// The OS type (always `hvm`).
    pub fn os_type(&self) -> &str {
        self.os_type_el().and_then(first_text).unwrap_or("hvm")
    }

    /// The guest architecture (`<os><type arch>`, default `x86_64`).
    pub fn arch(&self) -> &str {
        self.os_type_el()
            .and_then(|t| t.attr("arch"))
            .unwrap_or("x86_64")
    }

    /// The machine type (`<os><type machine>`), if given.
    pub fn machine(&self) -> Option<&str> {
        self.os_type_el().and_then(|t| t.attr("machine"))
    }

    /// Boot devices from `<os><boot dev>`, in order.
    pub fn boot_devs(&self) -> Vec<String> {
        self.root
            .child("os")
            .map(|os| {
                os.children_named("boot")
                    .filter_map(|b| b.attr("dev"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The firmware the domain asks for: `efi` (`<os firmware='efi'>`, a pflash or OVMF
    /// `<loader>`), `bios` (`<os firmware='bios'>`, a rom `<loader>`), or None.
    pub fn firmware(&self) -> Option<&'static str> {
        let os = self.root.child("os")?;
        match os.attr("firmware") {
            Some("efi") => return Some("efi"),
            Some("bios") => return Some("bios"),
            _ => {}
        }
        let loader = os.child("loader")?;
        let path = loader.text().to_ascii_lowercase();
        if loader.attr("type") == Some("pflash") || path.contains("ovmf") || path.contains("efi") {
            Some("efi")
        } else if loader.attr("type") == Some("rom") {
            Some("bios")
        } else {
            None
        }
    }

    /// The `<title>` text.
    pub fn title(&self) -> Option<String> {
        self.root.child("title").map(Element::text)
    }

    /// The `<description>` text.
    pub fn description(&self) -> Option<String> {
        self.root.child("description").map(Element::text)
    }

    fn live_aliases(&self) -> Vec<Option<String>> {
        match self.root.child("devices") {
            Some(devices) => devices::live_aliases(devices, self.machine()),
            None => Vec::new(),
        }
    }

    /// Views of all `<disk>` devices.
    pub fn disks(&self) -> Vec<DiskDef> {
        let Some(devices) = self.root.child("devices") else {
            return Vec::new();
        };
        let aliases = self.live_aliases();
        devices
            .elements()
            .enumerate()
            .filter(|(_, e)| e.name == "disk")
            .map(|(i, e)| devices::disk_view(i, e, aliases.get(i).cloned().flatten()))
            .collect()
    }

    /// Views of all `<interface>` devices.
    pub fn interfaces(&self) -> Vec<InterfaceDef> {
        let Some(devices) = self.root.child("devices") else {
            return Vec::new();
        };
        let aliases = self.live_aliases();
        devices
            .elements()
            .enumerate()
            .filter(|(_, e)| e.name == "interface")
            .map(|(i, e)| devices::interface_view(i, e, aliases.get(i).cloned().flatten()))
            .collect()
    }

    // ----------------------------------------------------------------
    // Metadata
    // ----------------------------------------------------------------

    /// Index (among `<metadata>`'s children) of elements in namespace `uri`.
    fn metadata_positions(&self, uri: &str) -> Vec<usize> {
        let Some(metadata) = self.root.child("metadata") else {
            return Vec::new();
        };
        let ancestors = [&self.root, metadata];
        metadata
            .children
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n {
                Node::Element(e) if element_namespace(e, &ancestors) == Some(uri) => Some(i),
                _ => None,
            })
            .collect()
    }

    /// The node the user pinned the domain to
    /// (`<metalvirt:node name='…'/>` in `<metadata>`).
    pub fn node_pin(&self) -> Option<String> {
        let metadata = self.root.child("metadata")?;
        let ancestors = [&self.root, metadata];
        metadata
            .elements()
            .find(|e| {
                e.local_name() == "node" && element_namespace(e, &ancestors) == Some(METALVIRT_NS)
            })
            .and_then(|e| e.attr("name"))
            .map(str::to_string)
    }

    /// The node the daemon bound the domain to, if recorded.
    pub fn bound_node(&self) -> Option<&str> {
        self.bound_node.as_deref()
    }

    /// Records the node the domain is bound to; it is shown in live XML
    /// (when [`LiveInfo::node`] is empty) and never in the inactive XML.
    pub fn set_bound_node(&mut self, node: Option<&str>) {
        self.bound_node = node.map(str::to_string);
    }

    /// Sets or removes (`None` or empty) the `<title>`.
    pub fn set_title(&mut self, title: Option<&str>) -> Result<(), DomainXmlError> {
        match title.filter(|t| !t.is_empty()) {
            Some(t) if t.contains('\n') => fail("Domain title can't contain newlines"),
            Some(t) => {
                self.set_top_text("title", t);
                Ok(())
            }
            None => {
                self.root.remove_children_named("title");
                Ok(())
            }
        }
    }

    /// Sets or removes (`None` or empty) the `<description>`.
    pub fn set_description(&mut self, description: Option<&str>) -> Result<(), DomainXmlError> {
        match description.filter(|d| !d.is_empty()) {
            Some(d) => self.set_top_text("description", d),
            None => {
                self.root.remove_children_named("description");
            }
        }
        Ok(())
    }

    fn set_top_text(&mut self, name: &str, text: &str) {
        match self.root.child_mut(name) {
            Some(el) => el.set_text(text),
            None => self
                .root
                .insert_ordered(Element::new(name).with_text(text), DOMAIN_ORDER),
        }
    }

    /// The custom metadata element in namespace `uri`, formatted on its own
    /// (with its namespace declaration), as virDomainGetMetadata returns it.
    pub fn metadata_element(&self, uri: &str) -> Option<String> {
        let metadata = self.root.child("metadata")?;
        let pos = *self.metadata_positions(uri).first()?;
        let Some(Node::Element(found)) = metadata.children.get(pos) else {
            return None;
        };
        let mut copy = found.clone();
        let mut missing = Vec::new();
        undeclared_prefixes(&copy, &mut Vec::new(), &mut missing);
        let ancestors = [&self.root, metadata];
        let mut decls = Vec::new();
        for prefix in missing {
            let p = (!prefix.is_empty()).then_some(prefix.as_str());
            let uri = ancestors
                .iter()
                .rev()
                .find_map(|a| a.namespace_decl(p))
                .filter(|u| !u.is_empty());
            if let Some(uri) = uri {
                let key = match p {
                    Some(p) => format!("xmlns:{p}"),
                    None => "xmlns".to_string(),
                };
                decls.push((key, uri.to_string()));
            }
        }
        for (i, d) in decls.into_iter().enumerate() {
            copy.attrs.insert(i, d);
        }
        // libvirt returns the element outside its namespace: the prefix bound to `uri` is
        // stripped from the subtree and its declaration dropped.
        strip_namespace(&mut copy, uri);
        let mut xml = copy.to_xml();
        if xml.ends_with('\n') {
            xml.pop();
        }
        Some(xml)
    }

    /// Sets (`Some(xml)`) or removes (`None`) the custom metadata element in
    /// namespace `uri`, like virDomainSetMetadata: the element's name is
    /// re-prefixed with `key` and `xmlns:KEY='uri'` is declared on it; it
    /// replaces any element of that namespace. Removing the last element
    /// drops `<metadata>`.
    pub fn set_metadata_element(
        &mut self,
        uri: &str,
        key: &str,
        xml: Option<&str>,
    ) -> Result<(), DomainXmlError> {
        if uri.trim().is_empty() {
            return fail("missing namespace URI for metadata element");
        }
        let new_el = match xml {
            None => None,
            Some(xml) => {
                if !valid_ncname(key) {
                    return fail(format!(
                        "invalid metadata key '{key}': not a valid XML namespace prefix"
                    ));
                }
                // It goes under <domain><metadata>: the whole domain stays within the limits.
                let mut el = Element::parse_at(xml, 3)
                    .map_err(|e| DomainXmlError::new(format!("malformed metadata XML: {e}")))?;
                el.name = format!("{key}:{}", el.local_name());
                el.remove_attr(&format!("xmlns:{key}"));
                el.attrs
                    .insert(0, (format!("xmlns:{key}"), uri.to_string()));
                Some(el)
            }
        };
        let positions = self.metadata_positions(uri);
        if let Some(metadata) = self.root.child_mut("metadata") {
            for pos in positions.into_iter().rev() {
                metadata.children.remove(pos);
            }
        }
        match new_el {
            Some(el) => match self.root.child_mut("metadata") {
                Some(metadata) => metadata.push(el),
                None => self
                    .root
                    .insert_ordered(Element::new("metadata").with_child(el), DOMAIN_ORDER),
            },
            None => {
                let empty = self
                    .root
                    .child("metadata")
                    .is_some_and(|m| !m.has_elements());
                if empty {
                    self.root.remove_children_named("metadata");
                }
            }
        }
        if uri == METALVIRT_NS {
            self.check_metalvirt_metadata()?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------
    // Formatting
    // ----------------------------------------------------------------

    /// Formats the definition like libvirt's dumpxml.
    ///
    /// Live output (`opts.live` set, `opts.inactive` false) adds the `id`
    /// attribute, an `<alias>` to every device libvirt names (see
    /// [`devices::live_aliases`]) and the bound node in
    /// `<metalvirt:node>`. Without `opts.secure`, graphics passwords are
    /// left out.
    pub fn to_xml(&self, opts: &FormatOpts) -> String {
        let live = if opts.inactive {
            None
        } else {
            opts.live.as_ref()
        };
        let has_secret = || {
            self.root.child("devices").is_some_and(|d| {
                d.children_named("graphics")
                    .any(|g| g.attr("passwd").is_some())
            })
        };
        // The persistent form of a live definition keeps only the user's aliases.
        let strip_aliases = self.live && opts.inactive;
        if live.is_none() && !strip_aliases && (opts.secure || !has_secret()) {
            // nothing to add or hide: format the definition as it is
            return self.root.to_xml();
        }
        let mut root = self.root.clone();
        if strip_aliases {
            if let Some(devices) = root.child_mut("devices") {
                for dev in devices.elements_mut() {
                    if devices::user_alias(dev).is_none() {
                        dev.remove_children_named("alias");
                    }
                }
            }
        }
        if let Some(live) = live {
            let pos = root
                .attrs
                .iter()
                .position(|(k, _)| k == "type")
                .map_or(0, |i| i + 1);
            root.set_attr_at(pos, "id", live.id.to_string());
            let aliases = self.live_aliases();
            if let Some(devices) = root.child_mut("devices") {
                for (dev, alias) in devices.elements_mut().zip(aliases) {
                    if let Some(alias) = alias {
                        if dev.child("alias").is_none() {
                            dev.insert_before_first(
                                Element::new("alias").with_attr("name", alias),
                                &["address"],
                            );
                        }
                    }
                }
            }
            let node = Some(live.node.as_str())
                .filter(|n| !n.is_empty())
                .or(self.bound_node.as_deref());
            if let Some(node) = node {
                show_node(&mut root, node);
            }
        }
        if !opts.secure {
            if let Some(devices) = root.child_mut("devices") {
                for g in devices.children_named_mut("graphics") {
                    g.remove_attr("passwd");
                }
            }
        }
        root.to_xml()
    }
}

/// Parse-time normalization of one device element: only `ua-` aliases are kept (moved before
/// `<address>`) unless `keep_aliases` (live definitions keep the aliases they were given), and
/// generated interface target names are dropped.
pub(super) fn normalize_device(
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

/// Writes `node` into the `<metalvirt:node>` metadata element of `root`,
/// creating it (and `<metadata>`) when needed.
fn show_node(root: &mut Element, node: &str) {
    let existing = root.child("metadata").and_then(|metadata| {
        let ancestors = [&*root, metadata];
        metadata.children.iter().position(|n| {
            matches!(n, Node::Element(e) if e.local_name() == "node"
                && element_namespace(e, &ancestors) == Some(METALVIRT_NS))
        })
    });
    if root.child("metadata").is_none() {
        root.insert_ordered(Element::new("metadata"), DOMAIN_ORDER);
    }
    let Some(metadata) = root.child_mut("metadata") else {
        return;
    };
    match existing.and_then(|i| metadata.children.get_mut(i)) {
        Some(Node::Element(el)) => el.set_attr("name", node),
        _ => metadata.push(
            Element::new(format!("{METALVIRT_PREFIX}:node"))
                .with_attr(&format!("xmlns:{METALVIRT_PREFIX}"), METALVIRT_NS)
                .with_attr("name", node),
        ),
    }
}

/// The first text node of an element (normalized elements have exactly one).
fn first_text(el: &Element) -> Option<&str> {
    el.children.iter().find_map(|n| match n {
        Node::Text(t) => Some(t.as_str()),
        _ => None,
    })
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

/// Removes namespace `uri` from a subtree: elements whose prefix is declared for `uri` (on the
/// subtree's root) lose the prefix, and the declaration is dropped.
fn strip_namespace(el: &mut Element, uri: &str) {
    let prefixes: Vec<String> = el
        .attrs
        .iter()
        .filter(|(k, v)| v == uri && (k == "xmlns" || k.starts_with("xmlns:")))
        .map(|(k, _)| k.strip_prefix("xmlns:").unwrap_or("").to_string())
        .collect();
    el.attrs
        .retain(|(k, v)| !(v == uri && (k == "xmlns" || k.starts_with("xmlns:"))));
    fn walk(e: &mut Element, prefixes: &[String]) {
        if let Some((p, local)) = e.name.split_once(':') {
            if prefixes.iter().any(|x| x == p) {
                e.name = local.to_string();
            }
        }
        for c in e.children.iter_mut() {
            if let Node::Element(c) = c {
                walk(c, prefixes);
            }
        }
    }
    walk(el, &prefixes);
}

#[cfg(test)]
mod tests {
    use super::super::fixture_tests::CountingRng;
    use super::*;

    const MINIMAL: &str = "<domain type='kvm'><name>vm1</name><memory>1048576</memory>\
        <os><type>hvm</type></os></domain>";

    fn parse(xml: &str) -> DomainDef {
        DomainDef::parse_with_rng(xml, &mut CountingRng(1)).expect("valid domain XML")
    }

    fn parse_err(xml: &str) -> String {
        DomainDef::parse_with_rng(xml, &mut CountingRng(1))
            .expect_err("invalid domain XML")
            .message
    }

    #[test]
    fn minimal_gets_defaults() {
        let def = parse(MINIMAL);
        assert_eq!(def.name(), "vm1");
        assert_eq!(def.virt_type(), "kvm");
        assert_eq!(def.memory_kib(), 1_048_576);
        assert_eq!(def.current_memory_kib(), 1_048_576);
        assert_eq!(def.max_vcpus(), 1);
        assert_eq!(def.current_vcpus(), 1);
        assert_eq!(def.os_type(), "hvm");
        assert_eq!(def.arch(), "x86_64");
        assert_eq!(def.machine(), None);
        assert_eq!(def.uuid().get_version_num(), 4);
        let xml = def.to_xml(&FormatOpts::inactive());
        assert!(
            xml.starts_with("<domain type='kvm'>\n  <name>vm1</name>\n  <uuid>"),
            "{xml}"
        );
        assert!(xml.contains("<memory unit='KiB'>1048576</memory>\n  <currentMemory unit='KiB'>1048576</currentMemory>\n  <vcpu placement='static'>1</vcpu>"), "{xml}");
        assert!(xml.contains("<type arch='x86_64'>hvm</type>"), "{xml}");
        // output parses back to the same definition
        assert_eq!(DomainDef::parse(&xml).expect("reparse"), def);
    }

    #[test]
    fn memory_units() {
        let cases = [
            ("", "4", 4),
            ("b", "1", 1),
            ("bytes", "1025", 2),
            ("KB", "1000", 977),
            ("k", "7", 7),
            ("KiB", "7", 7),
            ("MB", "1", 977),
            ("M", "2", 2048),
            ("MiB", "2", 2048),
            ("GB", "1", 976_563),
            ("G", "2", 2_097_152),
            ("GiB", "2", 2_097_152),
            ("gib", "1", 1_048_576),
            ("TB", "1", 976_562_500),
            ("T", "1", 1_073_741_824),
            ("TiB", "1", 1_073_741_824),
        ];
        for (unit, value, kib) in cases {
            let xml = format!(
                "<domain type='kvm'><name>m</name><memory unit='{unit}'>{value}</memory><os><type>hvm</type></os></domain>"
            );
            assert_eq!(parse(&xml).memory_kib(), kib, "{value} {unit}");
        }
        assert!(
            parse_err(&MINIMAL.replace("<memory>1048576", "<memory unit='XB'>1"))
                .contains("unknown suffix 'XB'")
        );
        assert!(parse_err(&MINIMAL.replace("1048576", "-1")).contains("Invalid value '-1'"));
        assert!(
            parse_err(&MINIMAL.replace("<memory>1048576", "<memory unit='EiB'>100000"))
                .contains("too large")
        );
    }

    #[test]
    fn current_memory_rules() {
        let x = MINIMAL.replace(
            "</memory>",
            "</memory><currentMemory unit='MiB'>512</currentMemory>",
        );
        assert_eq!(parse(&x).current_memory_kib(), 524_288);
        let x = MINIMAL.replace("</memory>", "</memory><currentMemory>0</currentMemory>");
        assert_eq!(parse(&x).current_memory_kib(), 1_048_576);
        let x = MINIMAL.replace(
            "</memory>",
            "</memory><currentMemory>2000000</currentMemory>",
        );
        assert!(parse_err(&x).contains("exceeds maximum"));
    }

    #[test]
    fn vcpu_rules() {
        let with = |v: &str| MINIMAL.replace("<os>", &format!("{v}<os>"));
        let def = parse(&with("<vcpu current='2' cpuset='0-3'>4</vcpu>"));
        assert_eq!((def.max_vcpus(), def.current_vcpus()), (4, 2));
        let xml = def.to_xml(&FormatOpts::inactive());
        assert!(
            xml.contains("<vcpu placement='static' cpuset='0-3' current='2'>4</vcpu>"),
            "{xml}"
        );
        let def = parse(&with("<vcpu current='4'>4</vcpu>"));
        assert!(def
            .to_xml(&FormatOpts::inactive())
            .contains("<vcpu placement='static'>4</vcpu>"));
        assert!(parse_err(&with("<vcpu>0</vcpu>")).contains("greater than 0"));
        assert!(parse_err(&with("<vcpu>two</vcpu>")).contains("must be an integer"));
        assert!(parse_err(&with("<vcpu current='5'>4</vcpu>"))
            .contains("must not be less than current"));
        assert!(parse_err(&with("<vcpu placement='magic'>4</vcpu>")).contains("'placement'"));
    }

    #[test]
    fn root_type_name_uuid_checks() {
        assert!(parse_err("<domian type='kvm'/>")
            .contains("expecting root element of 'domain', not 'domian'"));
        assert!(parse_err(&MINIMAL.replace(" type='kvm'", ""))
            .contains("missing domain type attribute"));
        assert!(parse_err(&MINIMAL.replace("'kvm'", "'foo'")).contains("invalid domain type foo"));
        assert!(
            parse_err(&MINIMAL.replace("'kvm'", "'xen'")).contains("unsupported domain type 'xen'")
        );
        assert_eq!(
            parse(&MINIMAL.replace("'kvm'", "'qemu'")).virt_type(),
            "qemu"
        );
        assert!(parse_err(&MINIMAL.replace("<name>vm1</name>", ""))
            .contains("missing name information"));
        assert!(parse_err(&MINIMAL.replace("vm1", "  ")).contains("missing name information"));
        assert!(parse_err(&MINIMAL.replace("vm1", "a/b")).contains("name a/b cannot contain '/'"));
        let with_uuid = |u: &str| MINIMAL.replace("</name>", &format!("</name><uuid>{u}</uuid>"));
        let def = parse(&with_uuid(" 6BA7B8109DAD11D180B400C04FD430C8 "));
        assert_eq!(
            def.uuid().to_string(),
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        );
        let def = parse(&with_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
        assert_eq!(
            def.uuid().to_string(),
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        );
        for bad in [
            "xyz",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8aa",
            "6ba7b81-09dad-11d1-80b4-00c04fd430c8",
        ] {
            assert!(
                parse_err(&with_uuid(bad)).contains("malformed uuid element"),
                "{bad}"
            );
        }
        // empty <uuid/> is generated, like libvirt
        assert_eq!(parse(&with_uuid("")).uuid().get_version_num(), 4);
        // live-only id attribute is dropped
        let def = parse(&MINIMAL.replace("type='kvm'", "id='5' type='kvm'"));
        assert!(def
            .to_xml(&FormatOpts::inactive())
            .starts_with("<domain type='kvm'>\n"));
    }

    #[test]
    fn singletons_must_be_unique() {
        let e = parse_err(&MINIMAL.replace("</name>", "</name><name>again</name>"));
        assert_eq!(e, "element <name> must appear only once in <domain>");
        let e = parse_err(&MINIMAL.replace("</os>", "</os><devices/><devices/>"));
        assert!(e.contains("<devices>"), "{e}");
    }

    #[test]
    fn os_checks() {
        assert!(parse_err(&MINIMAL.replace("<os><type>hvm</type></os>", ""))
            .contains("an os <type> must be specified"));
        assert!(parse_err(&MINIMAL.replace(">hvm<", ">xen<")).contains("unsupported OS type 'xen'"));
        assert!(parse_err(&MINIMAL.replace(">hvm<", ">dos<")).contains("unknown OS type 'dos'"));
        let def = parse(&MINIMAL.replace("<type>hvm", "<type machine='q35' arch='aarch64'>hvm"));
        assert_eq!(def.arch(), "aarch64");
        assert_eq!(def.machine(), Some("q35"));
        assert!(def
            .to_xml(&FormatOpts::inactive())
            .contains("<type arch='aarch64' machine='q35'>hvm</type>"));
    }

    fn with_devices(devs: &str) -> String {
        MINIMAL.replace("</domain>", &format!("<devices>{devs}</devices></domain>"))
    }

    #[test]
    fn device_defaults_and_checks() {
        let def = parse(&with_devices(
            "<interface type='network'><source network='default'/><target dev='vnet3'/></interface>\
             <disk type='file'><source file='/a.img'/><target dev='sdb'/></disk>\
             <disk type='file' device='floppy'><source file='/f.img'/><target dev='fda'/></disk>\
             <controller type='usb'/><controller type='usb' index='0'/>",
        ));
        let nics = def.interfaces();
        assert_eq!(nics.len(), 1);
        let mac = nics[0].mac.clone().expect("generated mac");
        assert!(mac.starts_with("52:54:00:"), "{mac}");
        assert_eq!(nics[0].target_dev, None, "vnet names are dropped");
        let disks = def.disks();
        assert_eq!(disks[0].target_bus.as_deref(), Some("scsi"));
        assert_eq!(disks[1].target_bus.as_deref(), Some("fdc"));
        let xml = def.to_xml(&FormatOpts::inactive());
        assert!(xml.contains("<target dev='sdb' bus='scsi'/>"), "{xml}");
        assert!(xml.contains("<controller type='usb' index='1'/>"), "{xml}");

        let e = parse_err(&with_devices(
            "<interface type='network'><mac address='zz:54:00:00:00:01'/></interface>",
        ));
        assert!(
            e.contains("unable to parse mac address 'zz:54:00:00:00:01'"),
            "{e}"
        );
        let e = parse_err(&with_devices(
            "<interface type='network'><mac address='01:00:5e:00:00:01'/></interface>",
        ));
        assert!(e.contains("multicast"), "{e}");
        let e = parse_err(&with_devices("<disk><source file='/a'/><target dev='vda'/></disk><disk><source file='/b'/><target dev='vda'/></disk>"));
        assert_eq!(e, "target 'vda' duplicated for disk sources '/a' and '/b'");
        let e = parse_err(&with_devices("<disk><source file='/a'/></disk>"));
        assert!(
            e.contains("missing target information for device <disk>"),
            "{e}"
        );
        let e = parse_err(&with_devices(
            "<disk><source file='/a'/><target dev='foo'/></disk>",
        ));
        assert!(e.contains("Unknown disk name 'foo'"), "{e}");
        let e = parse_err(&with_devices("<disk><target dev='vda'/><alias name='ua-x'/></disk><interface type='network'><alias name='ua-x'/></interface>"));
        assert_eq!(e, "non unique alias detected: ua-x");
        let e = parse_err(&with_devices(
            "<disk><target dev='vda'/><alias name='ua-a b'/></disk>",
        ));
        assert!(e.contains("invalid alias name 'ua-a b'"), "{e}");
        let e = parse_err(&with_devices(
            "<controller type='usb' index='0'/><controller type='usb' index='0'/>",
        ));
        assert!(
            e.contains("Multiple 'usb' controllers with index '0'"),
            "{e}"
        );
    }

    #[test]
    fn aliases_user_and_generated() {
        let def = parse(&with_devices(
            "<disk><target dev='vdb'/><alias name='virtio-disk9'/><address type='pci' bus='0x00' slot='0x05'/></disk>\
             <disk><target dev='vda'/><alias name='ua-boot'/></disk>\
             <interface type='network'><mac address='52:54:00:00:00:01'/></interface>\
             <graphics type='vnc' passwd='secret'/>",
        ));
        let inactive = def.to_xml(&FormatOpts::inactive());
        assert!(
            !inactive.contains("virtio-disk9"),
            "non-ua alias dropped: {inactive}"
        );
        assert!(inactive.contains("<alias name='ua-boot'/>"));
        assert!(!inactive.contains("passwd"));
        let secure = def.to_xml(&FormatOpts {
            secure: true,
            ..FormatOpts::inactive()
        });
        assert!(secure.contains("passwd='secret'"));
        let live = def.to_xml(&FormatOpts::live(7, "node-1"));
        assert!(live.starts_with("<domain type='kvm' id='7'>"), "{live}");
        // alias goes before <address>
        assert!(
            live.contains("<alias name='virtio-disk1'/>\n      <address type='pci'"),
            "{live}"
        );
        assert!(live.contains("<alias name='ua-boot'/>"));
        assert!(live.contains("<alias name='net0'/>"));
        assert!(
            live.contains(
                "<metalvirt:node xmlns:metalvirt='https://metalvirt.dev/xmlns/1' name='node-1'/>"
            ),
            "{live}"
        );
        assert_eq!(live, def.to_xml(&FormatOpts::live(7, "node-1")), "stable");
        let views = def.disks();
        assert_eq!(views[0].live_alias.as_deref(), Some("virtio-disk1"));
        assert_eq!(views[1].alias.as_deref(), Some("ua-boot"));
        // inactive wins over live
        let both = def.to_xml(&FormatOpts {
            inactive: true,
            ..FormatOpts::live(7, "node-1")
        });
        assert_eq!(both, inactive);
    }

    #[test]
    fn bound_node_and_pin() {
        let mut def = parse(MINIMAL);
        assert_eq!(def.node_pin(), None);
        def.set_bound_node(Some("node-9"));
        assert_eq!(def.bound_node(), Some("node-9"));
        let live = def.to_xml(&FormatOpts::live(1, ""));
        assert!(live.contains("name='node-9'"), "{live}");
        assert!(!def.to_xml(&FormatOpts::inactive()).contains("node-9"));

        let pinned = MINIMAL.replace(
            "</name>",
            "</name><metadata><mv:node xmlns:mv='https://metalvirt.dev/xmlns/1' name='node-2'/></metadata>",
        );
        let def = parse(&pinned);
        assert_eq!(def.node_pin().as_deref(), Some("node-2"));
        let live = def.to_xml(&FormatOpts::live(1, "node-2"));
        assert_eq!(live.matches("node-2").count(), 1, "{live}");
        assert!(def.to_xml(&FormatOpts::inactive()).contains("<mv:node"));
        let bad = pinned.replace(" name='node-2'", "");
        assert!(parse_err(&bad).contains("'name' attribute of <mv:node>"));
    }

    #[test]
    fn title_and_description() {
        let mut def = parse(MINIMAL);
        def.set_description(Some("multi\nline & <stuff>"))
            .expect("desc");
        def.set_title(Some("My VM")).expect("title");
        assert_eq!(def.title().as_deref(), Some("My VM"));
        assert!(def.set_title(Some("a\nb")).is_err());
        let xml = def.to_xml(&FormatOpts::inactive());
        let uuid_at = xml.find("<uuid>").expect("uuid");
        let title_at = xml.find("<title>").expect("title");
        let desc_at = xml.find("<description>").expect("description");
        let mem_at = xml.find("<memory").expect("memory");
        assert!(
            uuid_at < title_at && title_at < desc_at && desc_at < mem_at,
            "{xml}"
        );
        assert!(xml.contains("<description>multi\nline &amp; &lt;stuff&gt;</description>"));
        let back = DomainDef::parse(&xml).expect("reparse");
        assert_eq!(back.description().as_deref(), Some("multi\nline & <stuff>"));
        def.set_title(None).expect("title");
        def.set_description(Some("")).expect("desc");
        assert_eq!((def.title(), def.description()), (None, None));
    }

    #[test]
    fn custom_metadata() {
        let nova = "http://openstack.org/xmlns/libvirt/nova/1.1";
        let xml = MINIMAL.replace(
            "</name>",
            &format!("</name><metadata xmlns:nova='{nova}'><nova:instance><nova:name>vm</nova:name></nova:instance>\
              <other xmlns='urn:x'><a/></other></metadata>"),
        );
        let mut def = parse(&xml);
        let got = def.metadata_element(nova).expect("nova metadata");
        // As libvirt returns it: outside its namespace.
        assert_eq!(got, "<instance>\n  <name>vm</name>\n</instance>");
        assert!(def
            .metadata_element("urn:x")
            .expect("urn:x")
            .starts_with("<other>"));
        assert_eq!(def.metadata_element("urn:none"), None);

        def.set_metadata_element(
            "urn:app",
            "app",
            Some("<foo:cfg xmlns:foo='urn:old' k='v'><foo:x/></foo:cfg>"),
        )
        .expect("set");
        let got = def.metadata_element("urn:app").expect("app");
        assert!(got.starts_with("<cfg xmlns:foo='urn:old' k='v'>"), "{got}");
        // replacing
        def.set_metadata_element("urn:app", "app", Some("<cfg/>"))
            .expect("set");
        assert_eq!(def.metadata_element("urn:app").as_deref(), Some("<cfg/>"));
        assert!(def
            .set_metadata_element("urn:app", "app", Some("<cfg>"))
            .is_err());
        assert!(def
            .set_metadata_element("urn:app", "1bad", Some("<cfg/>"))
            .is_err());
        // removing everything drops <metadata>
        for uri in [nova, "urn:x", "urn:app"] {
            def.set_metadata_element(uri, "k", None).expect("remove");
        }
        assert!(def.root().child("metadata").is_none());
        // creating <metadata> at its canonical place
        def.set_metadata_element(METALVIRT_NS, "metalvirt", Some("<node name='n1'/>"))
            .expect("pin");
        assert_eq!(def.node_pin().as_deref(), Some("n1"));
        assert!(def
            .set_metadata_element(METALVIRT_NS, "metalvirt", Some("<node/>"))
            .is_err());
    }

    #[test]
    fn reorders_top_level() {
        let xml = "<domain type='kvm'><devices/><os><type>hvm</type></os><zzz/>\
                   <memory>1024</memory><name>x</name><clock offset='utc'/></domain>";
        let def = parse(xml);
        let names: Vec<_> = def.root().elements().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "name",
                "uuid",
                "memory",
                "currentMemory",
                "vcpu",
                "os",
                "clock",
                "on_poweroff",
                "on_reboot",
                "on_crash",
                "devices",
                "zzz"
            ]
        );
    }

    #[test]
    fn unit_scale_table() {
        assert_eq!(unit_scale(""), Some(1024));
        assert_eq!(unit_scale("KB"), Some(1000));
        assert_eq!(unit_scale("pib"), Some(1 << 50));
        assert_eq!(unit_scale("kiB"), Some(1024));
        assert_eq!(unit_scale("KiBB"), None);
        assert_eq!(unit_scale("x"), None);
    }

    /// Found by the domain_xml fuzz target: a running domain with a serial port and the
    /// console that mirrors it (nova's usual pair) could not be read back from its status
    /// file ("non unique alias detected: serial0"), so a daemon restart would have undone it.
    #[test]
    fn live_serial_and_its_console_share_an_alias_and_parse_back() {
        let mut d = parse(
            "<domain type='kvm'><name>c</name><memory>1024</memory>\
             <os><type>hvm</type></os><devices>\
             <serial type='pty'><target port='0'/></serial>\
             <console type='pty'><target type='serial' port='0'/></console>\
             </devices></domain>",
        );
        d.make_live();
        let raw = FormatOpts {
            live: None,
            secure: true,
            inactive: false,
        };
        let x = d.to_xml(&raw);
        assert_eq!(x.matches("<alias name='serial0'/>").count(), 2, "{x}");
        let back = DomainDef::parse_live(&x).expect("the live XML parses back");
        assert_eq!(back.to_xml(&raw), x);
        // Two serial ports with one alias are still refused.
        let e = parse_err(
            "<domain type='kvm'><name>c</name><memory>1024</memory><os><type>hvm</type></os>\
             <devices><serial type='pty'><alias name='ua-s'/></serial>\
             <serial type='pty'><alias name='ua-s'/></serial></devices></domain>",
        );
        assert!(e.contains("non unique alias"), "{e}");
    }
}
