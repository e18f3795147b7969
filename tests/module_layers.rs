//! The crate's modules import downwards only (docs/ARCHITECTURE.md, "Modules"): each
//! top-level module has a layer, and a module may use `crate::X` only when X's layer is below
//! its own. This test reads the sources and names every upward or sideways import, so a cycle
//! cannot creep back in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A new module must be added here.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: no crate imports.
    ("error", 0),
    ("persist", 0),
    ("events", 0),
    ("crash", 0),
    ("memory", 0),
    ("cli", 0),
    ("secret_value", 0),
    // Wire format and configuration.
    ("protocol", 1),
    ("config", 1),
    // The domain XML model: pure data.
    ("domain", 2),
    // Hardware backends; the secret store.
    ("backend", 3),
    ("secrets", 3),
    // The driver: lifecycle, devices, recovery, placement.
    ("driver", 4),
    // Host descriptions built from the driver.
    ("host", 5),
    // Connections and dispatch.
    ("rpc", 6),
    // Tools on top (load generator, fuzz targets).
    ("loadgen", 7),
    ("fuzz", 7),
];

fn layer(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`None` for lib.rs, main.rs, src/bin).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None if first == "bin" => None,
        None => Some(first),
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules a line of code names through `crate::`.
fn crate_refs(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b, c::{Y, Z}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

#[test]
fn modules_import_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for f in &files {
        let Some(m) = owner(&src, f) else { continue };
        seen.insert(m.clone());
        let Some(mine) = layer(&m) else {
            wrong.push(format!(
                "{}: module '{m}' has no layer in LAYERS",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for r in crate_refs(line) {
                if r == m {
                    continue;
                }
                match layer(&r) {
                    Some(theirs) if theirs < mine => {}
                    Some(theirs) => wrong.push(format!(
                        "{}:{}: '{m}' (layer {mine}) uses '{r}' (layer {theirs})",
                        f.strip_prefix(&src).unwrap().display(),
                        n + 1
                    )),
                    // Items at the crate root (`crate::uptime_ns`) are below everything.
                    None => {}
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    for (m, _) in LAYERS {
        assert!(
            seen.contains(*m),
            "LAYERS lists '{m}', which is not a module"
        );
    }
}

#[test]
fn crate_refs_reads_paths_and_groups() {
    assert_eq!(crate_refs("use crate::error::VirError;"), ["error"]);
    assert_eq!(
        crate_refs("use crate::{config::Config, driver, rpc::{a, b}};"),
        ["config", "driver", "rpc"]
    );
    assert_eq!(
        crate_refs("let x = crate::backend::Volume::Other; // crate::fuzz"),
        ["backend"]
    );
    assert!(crate_refs("/// see [`crate::fuzz`]").is_empty());
}
