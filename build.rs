//! Release builds of the daemon lay out the code it runs (start-up, serving, the common
//! calls) together, in the order `packaging/symbol-order.txt` lists it (recorded with
//! `scripts/symbol-order.sh`): the kernel maps code in 64 KiB windows around each page
//! touched, so code scattered through the binary makes most of it resident. A symbol the
//! file names that no longer exists is skipped; code it does not name follows.

fn main() {
    println!("cargo:rerun-if-changed=packaging/symbol-order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("packaging/symbol-order.txt");
    if release && linux && order.exists() {
        for bin in ["metalvirtd", "metalvirt-agent"] {
            println!(
                "cargo:rustc-link-arg-bin={bin}=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bin={bin}=-Wl,--no-warn-symbol-ordering");
        }
    }
}
