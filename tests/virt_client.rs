//! The daemon driven through libvirt's own C client library, via the `virt` crate (the same
//! library libvirt-python and nova sit on).

mod common;

use common::{domain_xml, Daemon};
use virt::connect::Connect;
use virt::error::ErrorNumber;

fn code(e: &virt::error::Error) -> Option<ErrorNumber> {
    match e.code() {
        virt::enumutil::Enum::Known(c) => Some(c),
        _ => None,
    }
}

#[test]
fn lifecycle_through_libvirt_client_library() {
    let d = Daemon::start("");
    let c = Connect::open(Some(&d.uri())).expect("open");
    assert!(c.lib_version().unwrap() >= 10_000_000);
    assert!(c.hyp_version().unwrap() >= 8_002_002);

    let dom = c.define_domain_xml(&domain_xml("rs1", "")).unwrap();
    assert_eq!(dom.id(), None, "inactive domains have no id");
    assert!(!dom.is_active().unwrap());
    assert!(dom.is_persistent().unwrap());
    dom.create().unwrap();
    let dom = c.lookup_domain_by_name("rs1").unwrap();
    assert!(dom.id().unwrap() > 0);
    let info = dom.info().unwrap();
    assert_eq!(info.max_mem, 2 * 1024 * 1024);
    assert_eq!(info.nr_virt_cpu, 2);
    let e = dom.create().unwrap_err();
    assert_eq!(code(&e), Some(ErrorNumber::OperationInvalid), "{e}");
    dom.destroy().unwrap();
    assert!(!dom.is_active().unwrap());
    let e = dom.destroy().unwrap_err();
    assert_eq!(code(&e), Some(ErrorNumber::OperationInvalid), "{e}");
    dom.undefine().unwrap();
    let e = c.lookup_domain_by_name("rs1").unwrap_err();
    assert_eq!(code(&e), Some(ErrorNumber::NoDomain), "{e}");
    let e = c
        .define_domain_xml("<domain type='kvm'><name>x</name>")
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorNumber::XmlError), "{e}");
    drop(c);
}

#[test]
fn many_clients_in_parallel() {
    let d = Daemon::start("[sim]\nnodes = 8\n");
    let uri = d.uri();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let c = Connect::open(Some(&uri)).unwrap();
                for i in 0..10 {
                    let name = format!("par-{t}-{i}");
                    let dom = c.define_domain_xml(&domain_xml(&name, "")).unwrap();
                    if i == 0 {
                        dom.create().unwrap();
                    }
                }
                drop(c);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = Connect::open(Some(&uri)).unwrap();
    assert_eq!(c.list_all_domains(0).unwrap().len(), 80);
    assert_eq!(
        c.list_all_domains(1).unwrap().len(),
        8,
        "one running per thread"
    );
    assert_eq!(d.sim_mapped(), (8, 8));
    drop(c);
}

#[test]
fn concurrent_defines_of_one_name_leave_one_consistent_winner() {
    let mut d = Daemon::start("");
    let uri = d.uri();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let c = Connect::open(Some(&uri)).unwrap();
                // No uuid in the XML: each define gets a fresh one.
                c.define_domain_xml(&domain_xml("contested", ""))
                    .map(|dom| dom.uuid_string().unwrap())
                    .ok()
            })
        })
        .collect();
    let winners: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    d.restart();
    let c = Connect::open(Some(&d.uri())).unwrap();
    let dom = c.lookup_domain_by_name("contested").unwrap();
    assert_eq!(dom.uuid_string().unwrap(), winners[0]);
}

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/xml")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_must_fail_fixture_gets_xml_error_through_the_daemon() {
    let d = Daemon::start("");
    let c = Connect::open(Some(&d.uri())).unwrap();
    for p in fixtures("fail") {
        let xml = std::fs::read_to_string(&p).unwrap();
        let want = xml
            .lines()
            .next()
            .and_then(|l| l.trim().strip_prefix("<!-- expect:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{} has no expect comment", p.display()))
            .to_string();
        let e = c
            .define_domain_xml(&xml)
            .expect_err(&format!("{} was accepted", p.display()));
        assert_eq!(
            code(&e),
            Some(ErrorNumber::XmlError),
            "{}: {e}",
            p.display()
        );
        assert!(
            e.to_string().contains(&want),
            "{}: {e} (want {want:?})",
            p.display()
        );
    }
    assert!(
        c.list_all_domains(0).unwrap().is_empty(),
        "nothing was defined"
    );
}

#[test]
fn every_xml_the_daemon_returns_passes_virt_xml_validate() {
    let d = Daemon::start("");
    let c = Connect::open(Some(&d.uri())).unwrap();
    // The secrets the fixtures' disks authenticate with.
    for (i, xml) in [
        "<secret><usage type='iscsi'><target>libvirtiscsi</target></usage></secret>",
        "<secret><uuid>87a5077a-ac75-46d3-b77b-7ba000ab1ce3</uuid><usage type='ceph'><name>client.cinder</name></usage></secret>",
    ]
    .iter()
    .enumerate()
    {
        let f = d.file(&format!("secret{i}.xml"), xml);
        let out = d.virsh_ok(&["secret-define", f.to_str().unwrap()]);
        let uuid = out.split_whitespace().nth(1).unwrap().to_string();
        let v = d.file("v", "s3cret");
        d.virsh_ok(&["secret-set-value", &uuid, "--file", v.to_str().unwrap(), "--plain"]);
    }
    let mut checked = 0;
    for p in fixtures("in") {
        // NVMe-oF sources are a metalvirt extension libvirt's schema does not know.
        if p.file_name().is_some_and(|n| n == "nvme-tcp.xml") {
            continue;
        }
        // The pinned fixture names a node of another lab.
        let xml = std::fs::read_to_string(&p)
            .unwrap()
            .replace("rack1-node07", "node-2");
        let dom = c.define_domain_xml(&xml).unwrap();
        common::virt_xml_validate(d.dir.path(), &dom.xml_desc(0).unwrap(), "domain");
        dom.create().unwrap();
        for flags in [0, 1, 2] {
            common::virt_xml_validate(d.dir.path(), &dom.xml_desc(flags).unwrap(), "domain");
        }
        dom.destroy().unwrap();
        dom.undefine().unwrap();
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
}
