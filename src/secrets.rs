//! libvirt secrets: Ceph keys, iSCSI CHAP passwords, volume passphrases.
//!
//! Persistent secrets live in `<config_dir>/secrets/` as `<uuid>.xml` and `<uuid>.base64`
//! (libvirt's layout), both mode 0600 in a 0700 directory; ephemeral ones only in memory.
//! Values never reach logs, error messages or XML: [`SecretValue`] prints as `<redacted>` and
//! is wiped when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use uuid::Uuid;

use crate::domain::tree::Element;
use crate::error::{from, VirError, VirResult};
use crate::persist;

/// Largest secret value (`REMOTE_SECRET_VALUE_MAX`).
pub const VALUE_MAX: usize = 65536;

/// `virSecretUsageType`.
#[allow(missing_docs)]
pub mod usage {
    pub const NONE: i32 = 0;
    pub const VOLUME: i32 = 1;
    pub const CEPH: i32 = 2;
    pub const ISCSI: i32 = 3;
    pub const TLS: i32 = 4;
    pub const VTPM: i32 = 5;
}

/// Usage type names and the element that carries the usage id.
/// (type, name, element holding the usage id, libvirt's text when that element is missing).
const USAGES: &[(i32, &str, &str, &str)] = &[
    (
        usage::VOLUME,
        "volume",
        "volume",
        "volume usage specified, but volume path is missing",
    ),
    (
        usage::CEPH,
        "ceph",
        "name",
        "Ceph usage specified, but name is missing",
    ),
    (
        usage::ISCSI,
        "iscsi",
        "target",
        "iSCSI usage specified, but target is missing",
    ),
    (
        usage::TLS,
        "tls",
        "name",
        "TLS usage specified, but name is missing",
    ),
    (
        usage::VTPM,
        "vtpm",
        "name",
        "vTPM usage specified, but name is missing",
    ),
];

/// The usage type number of a name (`ceph` → 2).
pub fn usage_type(name: &str) -> Option<i32> {
    USAGES
        .iter()
        .find(|(_, n, _, _)| *n == name)
        .map(|(t, _, _, _)| *t)
}

/// The name of a usage type number (2 → `ceph`); `none` for no usage.
pub fn usage_name(t: i32) -> &'static str {
    USAGES
        .iter()
        .find(|(n, _, _, _)| *n == t)
        .map(|(_, name, _, _)| *name)
        .unwrap_or("none")
}

pub use crate::secret_value::SecretValue;

/// A secret's definition (`<secret>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    /// UUID.
    pub uuid: Uuid,
    /// Kept in memory only.
    pub ephemeral: bool,
    /// The value may not be read back by clients.
    pub private: bool,
    /// `<description>`.
    pub description: Option<String>,
    /// `virSecretUsageType`.
    pub usage_type: i32,
    /// The usage id (volume path, ceph name, iSCSI target…); empty for no usage.
    pub usage_id: String,
}

/// What `remote_nonnull_secret` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// UUID.
    pub uuid: Uuid,
    /// Usage type.
    pub usage_type: i32,
    /// Usage id.
    pub usage_id: String,
}

fn xml_err(detail: &str) -> VirError {
    VirError::xml(detail).in_domain(from::SECRET)
}

/// libvirt's secret driver reports its own refusals as internal errors.
fn secret_internal(detail: &str) -> VirError {
    VirError::internal(detail).in_domain(from::SECRET)
}

fn yes_no(el: &Element, attr: &str) -> VirResult<bool> {
    match el.attr(attr) {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(_) => Err(xml_err(&format!("invalid value of '{attr}'"))),
    }
}

impl SecretDef {
    /// Parses secret XML (`virSecretDefParse`); a missing UUID is generated.
    pub fn parse(xml: &str) -> VirResult<SecretDef> {
        let root = Element::parse(xml).map_err(|e| xml_err(&e.to_string()))?;
        if root.name != "secret" {
            return Err(VirError::xml(&format!(
                "expecting root element of 'secret', not '{}'",
                root.name
            ))
            .in_domain(from::XML));
        }
        let ephemeral = yes_no(&root, "ephemeral")?;
        let private = yes_no(&root, "private")?;
        let uuid = match root.child("uuid").map(|u| u.text()) {
            None => Uuid::new_v4(),
            Some(t) => {
                Uuid::parse_str(t.trim()).map_err(|_| secret_internal("malformed uuid element"))?
            }
        };
        let description = root.child("description").map(|d| d.text());
        let (usage_type, usage_id) = match root.child("usage") {
            None => (usage::NONE, String::new()),
            Some(u) => match u.attr("type") {
                None => return Err(xml_err("unknown secret usage type")),
                Some("none") => (usage::NONE, String::new()),
                Some(ty) => {
                    let (t, _, elem, missing) =
                        USAGES.iter().find(|(_, n, _, _)| *n == ty).ok_or_else(|| {
                            VirError::config_unsupported(&format!("unknown secret usage type {ty}"))
                                .in_domain(from::SECRET)
                        })?;
                    let id = u
                        .child(elem)
                        .map(|e| e.text().trim().to_string())
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| secret_internal(missing))?;
                    (*t, id)
                }
            },
        };
        Ok(SecretDef {
            uuid,
            ephemeral,
            private,
            description,
            usage_type,
            usage_id,
        })
    }

    /// Formats like `virsh secret-dumpxml`.
    pub fn to_xml(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut root = Element::new("secret")
            .with_attr("ephemeral", yn(self.ephemeral))
            .with_attr("private", yn(self.private))
            .with_child(Element::new("uuid").with_text(self.uuid.hyphenated().to_string()));
        if let Some(d) = &self.description {
            root = root.with_child(Element::new("description").with_text(d.clone()));
        }
        if let Some((_, name, elem, _)) = USAGES.iter().find(|(t, _, _, _)| *t == self.usage_type) {
            root = root.with_child(
                Element::new("usage")
                    .with_attr("type", *name)
                    .with_child(Element::new(*elem).with_text(self.usage_id.clone())),
            );
        }
        root.to_xml()
    }

    fn wire(&self) -> SecretRef {
        SecretRef {
            uuid: self.uuid,
            usage_type: self.usage_type,
            usage_id: self.usage_id.clone(),
        }
    }

    fn usage_text(&self) -> String {
        USAGES
            .iter()
            .find(|(t, _, _, _)| *t == self.usage_type)
            .map(|(_, n, _, _)| format!("{n} {}", self.usage_id))
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Entry {
    def: SecretDef,
    value: Option<SecretValue>,
}

/// The secret store.
#[derive(Debug)]
pub struct Secrets {
    dir: PathBuf,
    map: Mutex<BTreeMap<Uuid, Entry>>,
    /// Serialises changes so files are written in the order the changes happened.
    write: tokio::sync::Mutex<()>,
}

fn no_uuid(uuid: &Uuid) -> VirError {
    VirError::no_secret(&format!("no secret with matching uuid '{uuid}'"))
}

fn io_err(what: &str, e: std::io::Error) -> VirError {
    VirError::operation_failed(&format!("{what}: {e}")).in_domain(from::SECRET)
}

impl Secrets {
    /// Loads the persistent secrets of `<config_dir>/secrets`.
    pub fn open(config_dir: &Path) -> Result<Secrets, String> {
        let dir = config_dir.join("secrets");
        persist::ensure_dir(&dir, 0o700).map_err(|e| format!("{}: {e}", dir.display()))?;
        persist::clean_temp_files(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut map = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for ent in entries.flatten() {
            let path = ent.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            let def = match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|x| SecretDef::parse(&x).map_err(|e| e.message))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(file = %path.display(), "unreadable secret skipped: {e}");
                    continue;
                }
            };
            let value = match std::fs::read(path.with_extension("base64")) {
                Ok(b) => match base64::engine::general_purpose::STANDARD.decode(b.trim_ascii()) {
                    Ok(v) => Some(SecretValue::new(v)),
                    Err(_) => {
                        tracing::error!(uuid = %def.uuid, "secret value file is not base64; value ignored");
                        None
                    }
                },
                Err(_) => None,
            };
            map.insert(def.uuid, Entry { def, value });
        }
        Ok(Secrets {
            dir,
            map: Mutex::new(map),
            write: tokio::sync::Mutex::new(()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Uuid, Entry>) -> T) -> T {
        f(&mut self.map.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn xml_path(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{}.xml", uuid.hyphenated()))
    }

    fn value_path(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{}.base64", uuid.hyphenated()))
    }

    async fn blocking(
        &self,
        f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Deletes a secret's files (value first, like libvirt).
    async fn remove_files(&self, uuid: &Uuid) -> VirResult<()> {
        let (x, v) = (self.xml_path(uuid), self.value_path(uuid));
        self.blocking(move || {
            persist::remove(&v)?;
            persist::remove(&x)
        })
        .await
        .map_err(|e| io_err("cannot delete secret", e))
    }

    /// `virSecretLookupByUUID`.
    pub fn lookup_uuid(&self, uuid: &Uuid) -> VirResult<SecretRef> {
        self.with(|m| m.get(uuid).map(|e| e.def.wire()))
            .ok_or_else(|| no_uuid(uuid))
    }

    /// `virSecretLookupByUsage`.
    pub fn lookup_usage(&self, usage_type: i32, usage_id: &str) -> VirResult<SecretRef> {
        self.with(|m| {
            m.values()
                .find(|e| e.def.usage_type == usage_type && e.def.usage_id == usage_id)
                .map(|e| e.def.wire())
        })
        .ok_or_else(|| VirError::no_secret(&format!("no secret with matching usage '{usage_id}'")))
    }

    /// `virSecretDefineXML`.
    pub async fn define(&self, xml: &str, flags: u32) -> VirResult<SecretRef> {
        // VIR_SECRET_DEFINE_VALIDATE: the parser is already strict.
        VirError::check_flags(flags, 1, "virSecretDefineXML")?;
        let def = SecretDef::parse(xml)?;
        let _w = self.write.lock().await;
        let old = self.with(|m| -> VirResult<Option<SecretDef>> {
            if def.usage_type != usage::NONE {
                if let Some(other) = m.values().find(|e| {
                    e.def.uuid != def.uuid
                        && e.def.usage_type == def.usage_type
                        && e.def.usage_id == def.usage_id
                }) {
                    return Err(secret_internal(&format!(
                        "a secret with UUID {} already defined for use with {}",
                        other.def.uuid, def.usage_id
                    )));
                }
            }
            let Some(cur) = m.get(&def.uuid) else {
                return Ok(None);
            };
            if cur.def.usage_id != def.usage_id {
                return Err(secret_internal(&format!(
                    "a secret with UUID {} is already defined for use with {}",
                    def.uuid, cur.def.usage_id
                )));
            }
            if cur.def.private && !def.private {
                return Err(secret_internal(
                    "cannot change private flag on existing secret",
                ));
            }
            Ok(Some(cur.def.clone()))
        })?;
        if def.ephemeral {
            // Made ephemeral: forget the files (libvirt does the same).
            if old.as_ref().is_some_and(|o| !o.ephemeral) {
                self.remove_files(&def.uuid).await?;
            }
        } else {
            // Made persistent: its value goes to disk too.
            let value = self
                .with(|m| m.get(&def.uuid).and_then(|e| e.value.clone()))
                .filter(|_| old.as_ref().is_some_and(|o| o.ephemeral));
            let vpath = self.value_path(&def.uuid);
            let path = self.xml_path(&def.uuid);
            let body = def.to_xml().into_bytes();
            self.blocking(move || {
                if let Some(v) = value {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(v.expose());
                    persist::write_atomic(&vpath, b64.as_bytes(), 0o600)?;
                }
                persist::write_atomic(&path, &body, 0o600)
            })
            .await
            .map_err(|e| io_err("cannot save secret definition", e))?;
        }
        self.with(|m| match m.get_mut(&def.uuid) {
            Some(e) => e.def = def.clone(),
            None => {
                m.insert(
                    def.uuid,
                    Entry {
                        def: def.clone(),
                        value: None,
                    },
                );
            }
        });
        tracing::info!(uuid = %def.uuid, usage = %def.usage_text(), redefined = old.is_some(), "secret defined");
        Ok(def.wire())
    }

    /// `virSecretGetXMLDesc`.
    pub fn xml_desc(&self, uuid: &Uuid, flags: u32) -> VirResult<String> {
        VirError::check_flags(flags, 0, "virSecretGetXMLDesc")?;
        self.with(|m| m.get(uuid).map(|e| e.def.to_xml()))
            .ok_or_else(|| no_uuid(uuid))
    }

    /// `virSecretSetValue`.
    pub async fn set_value(&self, uuid: &Uuid, value: Vec<u8>, flags: u32) -> VirResult<()> {
        let value = SecretValue::new(value);
        VirError::check_flags(flags, 0, "virSecretSetValue")?;
        if value.expose().len() > VALUE_MAX {
            // What libvirt's own client says before it would send such a value.
            return Err(VirError::rpc(&format!(
                "value length greater than maximum: {} > {VALUE_MAX}",
                value.expose().len()
            )));
        }
        let _w = self.write.lock().await;
        let ephemeral = self
            .with(|m| m.get(uuid).map(|e| e.def.ephemeral))
            .ok_or_else(|| no_uuid(uuid))?;
        if !ephemeral {
            let path = self.value_path(uuid);
            let body = base64::engine::general_purpose::STANDARD
                .encode(value.expose())
                .into_bytes();
            self.blocking(move || persist::write_atomic(&path, &body, 0o600))
                .await
                .map_err(|e| io_err("cannot save secret value", e))?;
        }
        self.with(|m| match m.get_mut(uuid) {
            Some(e) => {
                e.value = Some(value);
                Ok(())
            }
            None => Err(no_uuid(uuid)),
        })?;
        tracing::info!(uuid = %uuid, "secret value set");
        Ok(())
    }

    /// `virSecretGetValue` from a client: refused for private secrets.
    pub fn get_value(&self, uuid: &Uuid, flags: u32) -> VirResult<SecretValue> {
        VirError::check_flags(flags, 0, "virSecretGetValue")?;
        let private = self
            .with(|m| m.get(uuid).map(|e| e.def.private))
            .ok_or_else(|| no_uuid(uuid))?;
        if private {
            return Err(VirError::invalid_secret("secret is private"));
        }
        self.value(uuid)
    }

    /// A secret's value for the daemon's own use (disk authentication).
    pub fn value(&self, uuid: &Uuid) -> VirResult<SecretValue> {
        self.with(|m| match m.get(uuid) {
            None => Err(no_uuid(uuid)),
            Some(Entry { value: None, .. }) => Err(VirError::no_secret(&format!(
                "secret '{uuid}' does not have a value"
            ))),
            Some(Entry { value: Some(v), .. }) => Ok(v.clone()),
        })
    }

    /// `virSecretUndefine`.
    pub async fn undefine(&self, uuid: &Uuid) -> VirResult<()> {
        let _w = self.write.lock().await;
        let ephemeral = self
            .with(|m| m.get(uuid).map(|e| e.def.ephemeral))
            .ok_or_else(|| no_uuid(uuid))?;
        if !ephemeral {
            self.remove_files(uuid).await?;
        }
        self.with(|m| m.remove(uuid));
        tracing::info!(uuid = %uuid, "secret undefined");
        Ok(())
    }

    /// `virConnectListAllSecrets` (flags: EPHEMERAL 1, NO_EPHEMERAL 2, PRIVATE 4, NO_PRIVATE 8).
    pub fn list_all(&self, flags: u32) -> VirResult<Vec<SecretRef>> {
        VirError::check_flags(flags, 0xf, "virConnectListAllSecrets")?;
        let pick = |yes: u32, no: u32, v: bool| {
            flags & (yes | no) == 0 || (flags & yes != 0 && v) || (flags & no != 0 && !v)
        };
        Ok(self.with(|m| {
            m.values()
                .filter(|e| pick(1, 2, e.def.ephemeral) && pick(4, 8, e.def.private))
                .map(|e| e.def.wire())
                .collect()
        }))
    }

    /// Number of secrets.
    pub fn count(&self) -> usize {
        self.with(|m| m.len())
    }
}

/// Shared handle.
pub type SharedSecrets = Arc<Secrets>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    const CEPH: &str = "<secret ephemeral='no' private='no'><uuid>2a3b4c5d-0000-4000-8000-000000000001</uuid>\
        <description>ceph key</description><usage type='ceph'><name>client.cinder secret</name></usage></secret>";

    #[test]
    fn parse_and_format() {
        let d = SecretDef::parse(CEPH).unwrap();
        assert_eq!(d.usage_type, usage::CEPH);
        assert_eq!(d.usage_id, "client.cinder secret");
        assert_eq!(SecretDef::parse(&d.to_xml()).unwrap(), d);
        assert!(d
            .to_xml()
            .starts_with("<secret ephemeral='no' private='no'>"));
        for (bad, want) in [
            (
                "<domain/>",
                "expecting root element of 'secret', not 'domain'",
            ),
            ("<secret private='maybe'/>", "invalid value of 'private'"),
            (
                "<secret><usage type='ceph'/></secret>",
                "Ceph usage specified, but name is missing",
            ),
            (
                "<secret><usage type='nfs'><name>x</name></usage></secret>",
                "unknown secret usage type nfs",
            ),
            ("<secret><uuid>nope</uuid></secret>", "malformed uuid"),
        ] {
            let e = SecretDef::parse(bad).unwrap_err();
            assert!(e.message.contains(want), "{bad}: {e}");
        }
        let v =
            SecretDef::parse("<secret><usage type='volume'><volume>/v/1</volume></usage></secret>")
                .unwrap();
        assert_eq!((v.usage_type, v.usage_id.as_str()), (usage::VOLUME, "/v/1"));
        assert_eq!(
            format!("{:?}", SecretValue::new(b"AQBxyz".to_vec())),
            "<redacted 6 bytes>"
        );
    }

    #[tokio::test]
    async fn store_persists_privately_and_refuses_collisions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::open(dir.path()).unwrap();
        let r = s.define(CEPH, 0).await.unwrap();
        s.set_value(&r.uuid, b"AQBkey==".to_vec(), 0).await.unwrap();
        for f in ["xml", "base64"] {
            let p = dir.path().join(format!("secrets/{}.{f}", r.uuid));
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let other = CEPH.replace("000000000001", "000000000002");
        let e = s.define(&other, 0).await.unwrap_err();
        assert!(
            e.message
                .contains("already defined for use with client.cinder secret"),
            "{e}"
        );
        let e = s
            .set_value(&r.uuid, vec![0; VALUE_MAX + 1], 0)
            .await
            .unwrap_err();
        assert_eq!(e.code, code::RPC);
        assert_eq!(
            e.message,
            "value length greater than maximum: 65537 > 65536"
        );
        // reload from disk
        let again = Secrets::open(dir.path()).unwrap();
        assert_eq!(again.value(&r.uuid).unwrap().expose(), b"AQBkey==");
        assert_eq!(
            again
                .lookup_usage(usage::CEPH, "client.cinder secret")
                .unwrap()
                .uuid,
            r.uuid
        );
        let e = again.lookup_usage(usage::VOLUME, "x").unwrap_err();
        assert_eq!(e.code, code::NO_SECRET);
        again.undefine(&r.uuid).await.unwrap();
        assert!(Secrets::open(dir.path()).unwrap().count() == 0);
        // private and ephemeral
        let p = s
            .define("<secret ephemeral='yes' private='yes'><usage type='volume'><volume>v</volume></usage></secret>", 0)
            .await
            .unwrap();
        s.set_value(&p.uuid, b"pw".to_vec(), 0).await.unwrap();
        assert_eq!(
            s.get_value(&p.uuid, 0).unwrap_err().code,
            code::INVALID_SECRET
        );
        assert_eq!(s.value(&p.uuid).unwrap().expose(), b"pw");
        assert!(!dir.path().join(format!("secrets/{}.xml", p.uuid)).exists());
        assert_eq!(s.list_all(1).unwrap().len(), 1);
        assert_eq!(s.list_all(2).unwrap().len(), 1);
    }
}
