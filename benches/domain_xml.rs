//! Domain XML parse and format speed (`cargo bench --bench domain_xml`).
//!
//! A ~10 KB nova-style domain (the nova fixture with its devices repeated), parsed and
//! formatted as live XML. Under `cargo test` (no `--bench` argument) it runs a few rounds only,
//! to prove it still works.

use std::time::Instant;

use metalvirt::domain::def::{DomainDef, FormatOpts};
use metalvirt::driver::stored::StoredDef;

fn ten_kb_domain() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/xml/in/nova.xml");
    let full = std::fs::read_to_string(p).expect("nova fixture");
    let disk_start = full.find("<disk").expect("a disk");
    let devices_end = full.find("</devices>").expect("devices");
    let mut doc = full[..devices_end].to_string();
    let mut i = 0u8;
    while doc.len() + (full.len() - devices_end) < 10_000 {
        let chunk = full[disk_start..devices_end]
            .replace(
                "dev=\"vda\"",
                &format!("dev=\"vd{}\"", char::from(b'b' + i)),
            )
            .replace("ua-ba62e9ec", &format!("ua-{i}-ba62e9ec"))
            .replace("fa:16:3e:aa:bb:cc", &format!("fa:16:3e:aa:bb:{i:02x}"));
        doc.push_str(&chunk);
        i += 1;
    }
    doc.push_str(&full[devices_end..]);
    doc
}

fn time<T>(rounds: u32, mut f: impl FnMut() -> T) -> std::time::Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    start.elapsed() / rounds
}

fn main() {
    let rounds = if std::env::args().any(|a| a == "--bench") {
        2000
    } else {
        3
    };
    let doc = ten_kb_domain();
    let def = DomainDef::parse(&doc).expect("parse");
    assert!(def.disks().len() > 5);
    let parse = time(rounds, || {
        DomainDef::parse(std::hint::black_box(&doc)).expect("parse")
    });
    let live = time(rounds, || def.to_xml(&FormatOpts::live(1, "node-1")));
    let stored = time(rounds, || {
        StoredDef::parse_xml(std::hint::black_box(&doc)).expect("parse")
    });
    println!(
        "{} bytes: parse {parse:?}, live format {live:?}, parse+compact (define path) {stored:?}",
        doc.len()
    );
}
