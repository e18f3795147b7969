//! Runs the black-box test modules of the `tests/blackbox` Python package (libvirt's own Python
//! binding, as nova uses it, against the real daemon binary), one process per module. Each
//! module starts and stops its own daemons and peers; every case's verdict is printed, and a
//! failure names its cases.

use std::process::Command;

#[test]
fn python3_libvirt_modules() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let dir = tests.join("blackbox");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("test_") && n.ends_with(".py"))
        })
        .collect();
    scripts.sort();
    assert!(
        !scripts.is_empty(),
        "no test modules found in {}",
        dir.display()
    );
    let mut failed = Vec::new();
    for s in &scripts {
        let module = s.file_stem().unwrap().to_string_lossy().to_string();
        let out = Command::new("/usr/bin/python3")
            .args(["-m", &format!("blackbox.{module}")])
            .env("PYTHONPATH", &tests)
            .env("METALVIRTD", env!("CARGO_BIN_EXE_metalvirtd"))
            .env("METALVIRT_AGENT", env!("CARGO_BIN_EXE_metalvirt-agent"))
            .current_dir(&dir)
            .output()
            .expect("/usr/bin/python3 with python3-libvirt must be installed");
        let err = String::from_utf8_lossy(&out.stderr);
        // unittest's verbose lines ("test_x (__main__.Class.test_x) ... ok"): every case is
        // reported by name, and a failure names its cases, not only its script.
        let script = &module;
        let mut bad_cases = Vec::new();
        // A case with a docstring has its name on the line before the verdict.
        let mut named = String::new();
        for line in err.lines() {
            if line.starts_with("test") && line.contains(" (") {
                named = line.split_whitespace().next().unwrap_or("").to_string();
            }
            let Some((_, verdict)) = line.rsplit_once(" ... ") else {
                continue;
            };
            let name = named.as_str();
            println!("{script}: {name} ... {verdict}");
            if verdict.starts_with("FAIL") || verdict.starts_with("ERROR") {
                bad_cases.push(format!("{script}: {name}"));
            }
        }
        println!(
            "{}: {}",
            s.display(),
            err.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
        if !out.status.success() {
            eprintln!(
                "{}\n{}{err}",
                s.display(),
                String::from_utf8_lossy(&out.stdout)
            );
            if bad_cases.is_empty() {
                bad_cases.push(format!("{script} (exit status {})", out.status));
            }
            failed.extend(bad_cases);
        }
    }
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}
