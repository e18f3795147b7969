//! Definitions as the driver keeps them: compact. A [`StoredDef`] is the canonical persistent
//! XML (with secrets, as written to the config file) plus the handful of fields that reads
//! need. The element tree is rebuilt only when something needs it (a start, an edit, live XML),
//! which keeps a defined domain at about 1 KiB instead of a full tree.

use std::borrow::Cow;
use std::sync::Arc;

use uuid::Uuid;

use crate::domain::def::{DomainDef, FormatOpts, LiveInfo};
use crate::error::{VirError, VirResult};

/// A validated definition in compact form.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredDef {
    /// Canonical inactive XML including secrets (what the config file holds); shared with the
    /// definition log until it is written out, so it is never copied.
    xml: Arc<str>,
    /// The inactive XML without secrets, only when it differs from `xml`.
    public_xml: Option<Box<str>>,
    name: Box<str>,
    uuid: Uuid,
    memory_kib: u64,
    current_memory_kib: u64,
    max_vcpus: u32,
    current_vcpus: u32,
    os_type: Box<str>,
    /// A live definition (device aliases are part of it).
    live: bool,
}

fn opts(secure: bool, live: Option<LiveInfo>) -> FormatOpts {
    FormatOpts {
        inactive: live.is_none(),
        live,
        secure,
    }
}

impl StoredDef {
    /// Compacts a parsed definition.
    pub fn new(def: &DomainDef) -> Arc<StoredDef> {
        let live = def.is_live();
        // A live definition is kept as it is, aliases included.
        let raw = |secure: bool| FormatOpts {
            inactive: false,
            live: None,
            secure,
        };
        let (xml, public) = if live {
            (def.to_xml(&raw(true)), def.to_xml(&raw(false)))
        } else {
            (
                def.to_xml(&opts(true, None)),
                def.to_xml(&opts(false, None)),
            )
        };
        Arc::new(StoredDef {
            public_xml: (public != xml).then(|| public.into_boxed_str()),
            xml: Arc::from(xml),
            name: def.name().into(),
            uuid: def.uuid(),
            memory_kib: def.memory_kib(),
            current_memory_kib: def.current_memory_kib(),
            max_vcpus: def.max_vcpus(),
            current_vcpus: def.current_vcpus(),
            os_type: def.os_type().into(),
            live,
        })
    }

    /// Compacts a definition built or edited in memory (hot-plug, metadata), refusing one
    /// past the XML limits or the protocol's string limit: what is stored must parse again
    /// at the next start of the daemon and fit in a GET_XML_DESC reply.
    pub fn checked(def: &DomainDef) -> VirResult<Arc<StoredDef>> {
        def.root()
            .check_limits()
            .map_err(|e| VirError::xml(&format!("the definition would be too large: {e}")))?;
        let d = Self::new(def);
        if d.xml.len() > crate::protocol::xdr::STRING_MAX {
            return Err(VirError::xml(&format!(
                "the definition would be {} bytes, more than the protocol limit of {}",
                d.xml.len(),
                crate::protocol::xdr::STRING_MAX
            )));
        }
        Ok(d)
    }

    /// Parses and compacts the live definition of a run (a status file).
    pub fn parse_live_xml(xml: &str) -> VirResult<Arc<StoredDef>> {
        let def = DomainDef::parse_live(xml).map_err(|e| VirError::xml(&e.to_string()))?;
        Ok(Self::new(&def))
    }

    /// Whether this is the live definition of a run.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Parses and compacts XML (client input or a saved file).
    pub fn parse_xml(xml: &str) -> VirResult<Arc<StoredDef>> {
        Ok(Self::new(&super::parse_def(xml)?))
    }

    /// Rebuilds the element tree.
    pub fn tree(&self) -> VirResult<DomainDef> {
        let parsed = if self.live {
            DomainDef::parse_live(&self.xml)
        } else {
            DomainDef::parse(&self.xml)
        };
        parsed.map_err(|e| {
            VirError::internal(&format!(
                "stored definition of '{}' no longer parses: {e}",
                self.name
            ))
        })
    }

    /// The persistent XML; secrets only when `secure`. A live definition (a transient domain's)
    /// is formatted without its generated aliases.
    pub fn inactive_xml(&self, secure: bool) -> VirResult<Cow<'_, str>> {
        if self.live {
            return Ok(Cow::Owned(self.tree()?.to_xml(&opts(secure, None))));
        }
        Ok(Cow::Borrowed(match (&self.public_xml, secure) {
            (Some(p), false) => p,
            _ => &self.xml,
        }))
    }

    /// What the config file and the live status hold.
    pub fn config_xml(&self) -> &str {
        &self.xml
    }

    /// The same, shared.
    pub fn config_xml_shared(&self) -> Arc<str> {
        self.xml.clone()
    }

    /// Formats the live XML of a run (id and node fixed for the run).
    pub fn live_xml(&self, live: &LiveInfo) -> VirResult<LiveXml> {
        Ok(LiveXml::format(&self.tree()?, live))
    }

    /// Domain name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Domain uuid.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    /// `<memory>` in KiB.
    pub fn memory_kib(&self) -> u64 {
        self.memory_kib
    }
    /// `<currentMemory>` in KiB.
    pub fn current_memory_kib(&self) -> u64 {
        self.current_memory_kib
    }
    /// Maximum vcpus.
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus
    }
    /// Current vcpus.
    pub fn current_vcpus(&self) -> u32 {
        self.current_vcpus
    }
    /// OS type (`hvm`).
    pub fn os_type(&self) -> &str {
        &self.os_type
    }
}

/// The live XML of one run, formatted once.
#[derive(Debug)]
pub struct LiveXml {
    secure: Box<str>,
    public: Option<Box<str>>,
}

impl LiveXml {
    /// Formats the live XML of a run from its (live) definition's tree.
    pub fn format(t: &DomainDef, live: &LiveInfo) -> LiveXml {
        let secure = t.to_xml(&opts(true, Some(live.clone())));
        let public = t.to_xml(&opts(false, Some(live.clone())));
        LiveXml {
            public: (public != secure).then(|| public.into_boxed_str()),
            secure: secure.into_boxed_str(),
        }
    }

    /// The live XML; secrets only when `secure`.
    pub fn get(&self, secure: bool) -> &str {
        match (&self.public, secure) {
            (Some(p), false) => p,
            _ => &self.secure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='kvm'><name>s1</name><memory unit='MiB'>512</memory><vcpu current='1'>2</vcpu>\
<os><type>hvm</type></os><devices><graphics type='vnc' passwd='hunter2'/></devices></domain>";

    #[test]
    fn keeps_secrets_for_the_config_only() {
        let s = StoredDef::parse_xml(XML).unwrap();
        assert!(s.config_xml().contains("passwd='hunter2'"));
        assert!(!s.inactive_xml(false).unwrap().contains("hunter2"));
        assert!(s.inactive_xml(true).unwrap().contains("hunter2"));
        assert_eq!(
            (s.max_vcpus(), s.current_vcpus(), s.memory_kib()),
            (2, 1, 512 * 1024)
        );
        let live = s
            .live_xml(&LiveInfo {
                id: 3,
                node: "node-2".into(),
            })
            .unwrap();
        assert!(live.get(false).contains("id='3'") && !live.get(false).contains("hunter2"));
        assert!(live.get(true).contains("hunter2"));
    }

    #[test]
    fn rebuilding_the_tree_is_lossless() {
        let s = StoredDef::parse_xml(XML).unwrap();
        let again = StoredDef::new(&s.tree().unwrap());
        assert_eq!(*s, *again);
    }
}
