//! Fixture-driven tests of the domain XML model.
//!
//! - `fixtures/xml/in/NAME.xml` parsed and formatted inactive must equal
//!   `fixtures/xml/out/NAME.xml` (run with `REGENERATE=1` to rewrite `out/`);
//! - every `out/` file, inactive and live, must pass libvirt's
//!   `virt-xml-validate` (skipped with a notice when it is not installed;
//!   fixtures listed in [`NOT_LIBVIRT_VALID`] are exempt);
//! - every `fixtures/xml/fail/*.xml` starts with `<!-- expect: TEXT -->` and
//!   must be rejected with an error containing TEXT;
//! - `xml-schemas/domain.rng` must accept every `in/` file and reject the
//!   `fail/` files except those in [`RNG_CANNOT_CATCH`] (uses `xmllint`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::RngCore;

use super::def::{DomainDef, FormatOpts, UNALIASED_DEVICES};
use super::tree::Element;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/xml");
const RNG_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/xml-schemas/domain.rng");

/// Fixtures using things libvirt's own schema does not know.
const NOT_LIBVIRT_VALID: &[&str] = &["nvme-tcp.xml"];

/// `fail/` cases that are rule violations a grammar cannot express
/// (cross-element comparisons, uniqueness) or that xmllint accepts.
const RNG_CANNOT_CATCH: &[&str] = &[
    "current-gt-memory.xml",
    "doctype.xml",
    "dup-alias.xml",
    "dup-disk-target.xml",
];

/// A deterministic byte source for reproducible UUIDs and MACs.
pub(super) struct CountingRng(pub u8);

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

fn xml_files(dir: &str) -> Vec<PathBuf> {
    let path = Path::new(FIXTURES).join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    files
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn parse_fixture(p: &Path) -> DomainDef {
    DomainDef::parse_with_rng(&read(p), &mut CountingRng(0x10))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tool_available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty() || !o.stdout.is_empty())
}

/// A temporary directory, removed when dropped (also when the test panics).
fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("domxml-{tag}"))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

/// The schema tools are part of the test environment (scripts/test.sh installs them): a
/// missing tool fails the test instead of silently skipping the check.
fn require_tool(tool: &str) {
    assert!(
        tool_available(tool),
        "{tool} is not installed (apt-get install libvirt-clients libxml2-utils; scripts/test.sh does)"
    );
}

#[test]
fn fixtures_round_trip() {
    let regenerate = std::env::var_os("REGENERATE").is_some_and(|v| v == "1");
    let inputs = xml_files("in");
    assert!(inputs.len() >= 10, "expected at least 10 fixtures");
    let mut mismatches = Vec::new();
    for input in &inputs {
        let name = file_name(input);
        let out_path = Path::new(FIXTURES).join("out").join(&name);
        let got = parse_fixture(input).to_xml(&FormatOpts::inactive());
        if regenerate {
            fs::write(&out_path, &got)
                .unwrap_or_else(|e| panic!("writing {}: {e}", out_path.display()));
            continue;
        }
        let want = fs::read_to_string(&out_path).unwrap_or_default();
        if got != want {
            mismatches.push(format!("--- {name}: got\n{got}\n--- want\n{want}"));
        }
        // the output is a fixed point
        let again = parse_fixture(&out_path).to_xml(&FormatOpts::inactive());
        assert_eq!(again, want, "{name}: formatting the out file changes it");
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    for out in xml_files("out") {
        assert!(
            Path::new(FIXTURES)
                .join("in")
                .join(file_name(&out))
                .exists(),
            "{} has no input",
            out.display()
        );
    }
}

#[test]
fn fixtures_live_have_aliases() {
    for out in xml_files("out") {
        let name = file_name(&out);
        let def = parse_fixture(&out);
        let live = def.to_xml(&FormatOpts::live(7, "node-1"));
        let root = Element::parse(&live).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            root.attrs.get(1).map(|(k, v)| (k.as_str(), v.as_str())),
            Some(("id", "7"))
        );
        // live XML shows the node the domain is bound to (here node-1)
        let node_el = root
            .child("metadata")
            .and_then(|m| m.elements().find(|e| e.local_name() == "node"))
            .unwrap_or_else(|| panic!("{name}: no node metadata in live XML"));
        assert_eq!(node_el.attr("name"), Some("node-1"), "{name}");
        let mut aliases = Vec::new();
        if let Some(devices) = root.child("devices") {
            for dev in devices.elements() {
                if UNALIASED_DEVICES.contains(&dev.name.as_str())
                    || (dev.name == "memballoon" && dev.attr("model") == Some("none"))
                {
                    assert!(
                        dev.child("alias").is_none(),
                        "{name}: <{}> has an alias",
                        dev.name
                    );
                    continue;
                }
                let alias = dev
                    .child("alias")
                    .and_then(|a| a.attr("name"))
                    .unwrap_or_else(|| panic!("{name}: <{}> has no alias in live XML", dev.name));
                aliases.push(alias.to_string());
            }
        }
        // consoles mirroring serial0 share its alias, like in libvirt
        let mut unique: Vec<&String> = aliases.iter().filter(|a| *a != "serial0").collect();
        unique.dedup();
        let total = unique.len();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), total, "{name}: duplicate aliases {aliases:?}");
        // inactive output has none of the live additions
        let inactive = def.to_xml(&FormatOpts::inactive());
        assert!(!inactive.contains(" id='7'"), "{name}");
        for alias in &aliases {
            if !alias.starts_with("ua-") {
                assert!(
                    !inactive.contains(&format!("<alias name='{alias}'/>")),
                    "{name}: {alias}"
                );
            }
        }
    }
    let nova = parse_fixture(&Path::new(FIXTURES).join("in/nova.xml"));
    let live = nova.to_xml(&FormatOpts::live(3, "node-1"));
    assert!(live.contains("<alias name='ua-ba62e9ec-c64f-4b11-bc10-c411e9026fa8'/>"));
    assert!(live.contains("<alias name='net0'/>"));
    assert!(live.contains("<alias name='serial0'/>"));
    assert!(live.contains("<alias name='balloon0'/>"));
}

#[test]
fn fixtures_fail() {
    let cases = xml_files("fail");
    assert!(cases.len() >= 15, "expected at least 15 fail cases");
    for case in cases {
        let text = read(&case);
        let first = text.lines().next().unwrap_or_default();
        let expect = first
            .strip_prefix("<!-- expect: ")
            .and_then(|s| s.strip_suffix(" -->"))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line must be <!-- expect: ... -->",
                    case.display()
                )
            });
        match DomainDef::parse(&text) {
            Ok(_) => panic!(
                "{}: parsed, expected error containing {expect:?}",
                case.display()
            ),
            Err(e) => assert!(
                e.to_string().contains(expect),
                "{}: error {:?} does not contain {expect:?}",
                case.display(),
                e.to_string()
            ),
        }
    }
}

fn virt_xml_validate(path: &Path) -> Result<(), String> {
    let out = Command::new("virt-xml-validate")
        .arg(path)
        .arg("domain")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn fixtures_validate_with_libvirt_schema() {
    require_tool("virt-xml-validate");
    require_tool("xmllint");
    let dir = scratch_dir("virt-xml-validate");
    let mut failures = Vec::new();
    let mut checked = 0;
    for out in xml_files("out") {
        let name = file_name(&out);
        if NOT_LIBVIRT_VALID.contains(&name.as_str()) {
            continue;
        }
        if let Err(e) = virt_xml_validate(&out) {
            failures.push(format!("{name} (inactive): {e}"));
        }
        let live = parse_fixture(&out).to_xml(&FormatOpts::live(7, "node-1"));
        let live_path = dir.path().join(format!("live-{name}"));
        fs::write(&live_path, live).unwrap_or_else(|e| panic!("writing: {e}"));
        if let Err(e) = virt_xml_validate(&live_path) {
            failures.push(format!("{name} (live): {e}"));
        }
        checked += 2;
    }
    drop(dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("virt-xml-validate: {checked} documents valid");
}

fn xmllint_relaxng(path: &Path) -> Result<(), String> {
    let out = Command::new("xmllint")
        .args(["--noout", "--nonet", "--relaxng", RNG_SCHEMA])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn own_relaxng_schema() {
    require_tool("xmllint");
    for input in xml_files("in").into_iter().chain(xml_files("out")) {
        if let Err(e) = xmllint_relaxng(&input) {
            panic!("{} rejected by domain.rng: {e}", input.display());
        }
    }
    let dir = scratch_dir("relaxng");
    for out in xml_files("out") {
        let live = parse_fixture(&out).to_xml(&FormatOpts::live(7, "node-1"));
        let p = dir.path().join(file_name(&out));
        fs::write(&p, live).unwrap_or_else(|e| panic!("writing: {e}"));
        if let Err(e) = xmllint_relaxng(&p) {
            panic!("live {} rejected by domain.rng: {e}", out.display());
        }
    }
    drop(dir);
    for case in xml_files("fail") {
        let name = file_name(&case);
        let result = xmllint_relaxng(&case);
        if RNG_CANNOT_CATCH.contains(&name.as_str()) {
            assert!(
                result.is_ok(),
                "{name} now rejected by domain.rng; update RNG_CANNOT_CATCH"
            );
        } else {
            assert!(result.is_err(), "{name} accepted by domain.rng");
        }
    }
}
