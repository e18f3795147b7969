//! `VIR_DOMAIN_DEFINE_VALIDATE`: validation of domain XML against metalvirt's own RelaxNG
//! schema (`xml-schemas/domain.rng`, embedded in the binary). libxml2's validator is used
//! through `xmllint` (package libxml2-utils), the same engine libvirt uses in-process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The schema text.
pub const DOMAIN_RNG: &str = include_str!("../../xml-schemas/domain.rng");

/// Writes the embedded schema as `dir/domain.rng` (xmllint reads schemas from files) unless
/// it is already there with the same content. The daemon passes its state directory, so no
/// file is left anywhere else.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    let p = dir.join("domain.rng");
    if std::fs::read_to_string(&p).ok().as_deref() != Some(DOMAIN_RNG) {
        crate::persist::write_atomic(&p, DOMAIN_RNG.as_bytes(), 0o644)?;
    }
    Ok(p)
}

/// Validates a domain document against the schema file `schema` (see [`install`]); the
/// error names what failed, as xmllint reports it.
pub fn validate(schema: &Path, xml: &str) -> Result<(), String> {
    let mut child = Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(schema)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("schema validation needs xmllint (libxml2-utils): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(xml.as_bytes())
            .map_err(|e| format!("cannot run xmllint: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot run xmllint: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let detail: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("fails to validate") && !l.trim().is_empty())
        .map(|l| l.strip_prefix("-:").unwrap_or(l))
        .take(3)
        .collect();
    Err(if detail.is_empty() {
        "document does not validate".into()
    } else {
        detail.join("; ")
    })
}
