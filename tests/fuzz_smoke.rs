//! The smoke run of every fuzz target (`metalvirt::fuzz`): its seed corpus from the fixtures,
//! every past finding (`fixtures/fuzz/regressions/`), and deterministic variations of each
//! seed, in process. The coverage-guided runs are `scripts/fuzz.sh TARGET SECONDS`.
//!
//! `METALVIRT_FUZZ_SEEDS=DIR` writes the seed corpora to `DIR/<target>/` instead (used by
//! `scripts/fuzz.sh`).

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn smoke(target: &str) {
    let seeds = metalvirt::fuzz::seeds(root(), target);
    assert!(!seeds.is_empty(), "target {target} has no seeds");
    let mut runs = 0;
    for (i, s) in seeds.iter().enumerate() {
        metalvirt::fuzz::run(target, s);
        runs += 1;
        for v in metalvirt::fuzz::variations(s, 40, i as u64) {
            metalvirt::fuzz::run(target, &v);
            runs += 1;
        }
    }
    eprintln!("{target}: {} seeds, {runs} runs", seeds.len());
}

#[test]
fn write_seeds() {
    let Some(dir) = std::env::var_os("METALVIRT_FUZZ_SEEDS") else {
        return;
    };
    for (t, _) in metalvirt::fuzz::TARGETS {
        let d = Path::new(&dir).join(t);
        std::fs::create_dir_all(&d).unwrap();
        for (i, s) in metalvirt::fuzz::seeds(root(), t).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:04}")), s).unwrap();
        }
    }
}

macro_rules! smoke_tests {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name));
            }
        )*
        #[test]
        fn every_target_has_a_smoke_test() {
            let listed = [$(stringify!($name)),*];
            for (t, _) in metalvirt::fuzz::TARGETS {
                assert!(listed.contains(t), "no smoke test for fuzz target {t}");
            }
        }
    };
}

smoke_tests!(
    rpc_call,
    domain_xml,
    device_xml,
    secret_xml,
    config_toml,
    spdk_reply,
    ovsdb_reply,
    redfish_json
);
