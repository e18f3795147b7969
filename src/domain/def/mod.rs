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
//!
//! The module is split along its seams: `normalize` (parse-time validation,
//! normalization and defaults), `access` (typed reads of the tree), `metadata`
//! (title, description, custom metadata, bound node) and `format` (dumpxml).

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
}

/// The first text node of an element (normalized elements have exactly one).
fn first_text(el: &Element) -> Option<&str> {
    el.children.iter().find_map(|n| match n {
        Node::Text(t) => Some(t.as_str()),
        _ => None,
    })
}

mod access;
mod format;
mod metadata;
mod normalize;
#[cfg(test)]
mod tests;

pub(in crate::domain) use normalize::normalize_device;
