//! `VIR_DOMAIN_DEFINE_VALIDATE`: validation of domain XML against metalvirt's own RelaxNG
//! schema (`xml-schemas/domain.rng`, embedded in the binary). libxml2's validator is used
//! through `xmllint` (package libxml2-utils), the same engine libvirt uses in-process.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The schema text.
pub const DOMAIN_RNG: &str = include_str!("../../xml-schemas/domain.rng");

fn schema_path() -> Result<&'static PathBuf, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!(
            "metalvirt-domain-{}-{}.rng",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ));
        std::fs::write(&p, DOMAIN_RNG)
            .map(|_| p)
            .map_err(|e| format!("cannot write schema: {e}"))
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Validates a domain document; the error names what failed, as xmllint reports it.
pub fn validate(xml: &str) -> Result<(), String> {
    let schema = schema_path()?;
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
