//! The libvirt domain XML model of metalvirt.
//!
//! - [`tree`]: a generic, order-preserving XML element tree (parse/format).
//! - [`def`]: [`DomainDef`], the validated and normalized domain definition
//!   with typed accessors, metadata editing and libvirt-style formatting.
//! - [`devices`]: read-only views of disks and interfaces and the device
//!   aliases shown in live XML.
//! - [`schema`]: validation against metalvirt's own RelaxNG schema.
//!
//! The module refers to its siblings only through `super::`.

pub mod def;
pub mod devices;
pub mod hotplug;
pub mod schema;
pub mod tree;

pub use def::{
    DomainDef, DomainXmlError, FormatOpts, LiveInfo, ACCEPTED_VIRT_TYPES, DOMAIN_ORDER,
    METALVIRT_NS, METALVIRT_PREFIX,
};
pub use devices::{AuthDef, DiskDef, HostDef, InterfaceDef, SourceDef};
pub use tree::{Element, Node, XmlError};

#[cfg(test)]
mod fixture_tests;
