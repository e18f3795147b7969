//! Black-box device and secret tests: the real daemon driven by the real `virsh`.

mod common;

use common::{domain_xml, Daemon};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/devices");
const CEPH_UUID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const VOL2: &str = "22222222-aaaa-4bbb-8ccc-333333333333";

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// Defines the operator's ceph secret from the fixture and gives it a value.
fn ceph_secret(d: &Daemon) {
    let out = d.virsh_ok(&["secret-define", &fixture("ceph-secret.xml")]);
    assert!(
        out.contains(&format!("Secret {CEPH_UUID} created")),
        "{out}"
    );
    let key = d.file("key", "AQBvbWV0YWx2aXJ0LXZpcnNoLWtleS0tLS0tLS0tLQ==");
    d.virsh_ok(&[
        "secret-set-value",
        CEPH_UUID,
        "--file",
        key.to_str().unwrap(),
    ]);
}

fn running(d: &Daemon, name: &str) {
    let f = d.file(&format!("{name}.xml"), &domain_xml(name, ""));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", name]);
}

/// (source, target) of every disk the simulated lab has mapped.
fn mapped_disks(d: &Daemon) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in d.sim_state()["nodes"].as_object().unwrap().values() {
        if let Some(disks) = node["disks"].as_object() {
            for disk in disks.values() {
                out.push((
                    disk["spec"]["source"].as_str().unwrap().to_string(),
                    disk["spec"]["target"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn plugged_macs(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for node in d.sim_state()["nodes"].as_object().unwrap().values() {
        if let Some(nics) = node["nics"].as_object() {
            out.extend(
                nics.values()
                    .map(|n| n["spec"]["mac"].as_str().unwrap().to_string()),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn attach_and_detach_disks() {
    let d = Daemon::start("");
    ceph_secret(&d);
    running(&d, "bm1");
    // attach-disk builds the XML client-side and sends ATTACH_DEVICE (live)
    let out = d.virsh_ok(&[
        "attach-disk",
        "bm1",
        "/dev/disk/by-id/lab-vol",
        "vdc",
        "--targetbus",
        "virtio",
        "--sourcetype",
        "block",
    ]);
    assert!(out.contains("Disk attached successfully"), "{out}");
    assert!(mapped_disks(&d).contains(&("/dev/disk/by-id/lab-vol".into(), "vdc".into())));
    // attach-device --persistent on a running domain = live + config
    d.virsh_ok(&[
        "attach-device",
        "bm1",
        &fixture("rbd-volume.xml"),
        "--persistent",
    ]);
    let list = d.virsh_ok(&["domblklist", "bm1", "--details"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["network", "disk", "vda", "volumes/bm1-root"],
            vec!["network", "disk", "vdb", &format!("volumes/volume-{VOL2}")],
            vec!["block", "disk", "vdc", "/dev/disk/by-id/lab-vol"],
        ],
        "{list}"
    );
    let inactive = d.virsh_ok(&["domblklist", "bm1", "--inactive"]);
    assert!(
        inactive.contains("vdb") && !inactive.contains("vdc"),
        "{inactive}"
    );
    // sizes, growth, statistics
    let info = d.virsh_ok(&["domblkinfo", "bm1", "vdb"]);
    assert!(
        info.contains(&format!("Capacity:       {}", 20u64 << 30)),
        "{info}"
    );
    let out = d.virsh_ok(&["blockresize", "bm1", "vdb", "25G"]);
    assert!(out.contains("Block device 'vdb' is resized"), "{out}");
    let info = d.virsh_ok(&["domblkinfo", "bm1", "vdb", "--human"]);
    assert!(info.contains("25.000 GiB"), "{info}");
    let err = d.virsh_err(&["blockresize", "bm1", "vdb", "1G"]);
    assert!(err.contains("cannot shrink disk vdb"), "{err}");
    let all = d.virsh_ok(&["domblkinfo", "bm1", "--all"]);
    assert_eq!(all.lines().filter(|l| l.contains("vd")).count(), 3, "{all}");
    let stats = d.virsh_ok(&["domblkstat", "bm1", "vdb"]);
    for field in [
        "rd_req",
        "rd_bytes",
        "wr_req",
        "wr_bytes",
        "flush_operations",
    ] {
        assert!(stats.contains(&format!("vdb {field} ")), "{field}: {stats}");
    }
    // detach-disk (live), then detach-device --config of the persistent copy
    let out = d.virsh_ok(&["detach-disk", "bm1", "vdc"]);
    assert!(out.contains("Disk detached successfully"), "{out}");
    d.virsh_ok(&["detach-device", "bm1", &fixture("rbd-volume.xml"), "--live"]);
    assert_eq!(
        mapped_disks(&d),
        vec![("rbd:volumes/bm1-root".to_string(), "vda".to_string())]
    );
    assert!(d
        .virsh_ok(&["domblklist", "bm1", "--inactive"])
        .contains("vdb"));
    d.virsh_ok(&[
        "detach-device",
        "bm1",
        &fixture("rbd-volume.xml"),
        "--config",
    ]);
    assert!(!d
        .virsh_ok(&["domblklist", "bm1", "--inactive"])
        .contains("vdb"));
    let err = d.virsh_err(&["detach-disk", "bm1", "vdq"]);
    assert!(
        err.contains("No disk found whose source path or target is vdq"),
        "{err}"
    );
    let err = d.virsh_err(&["detach-device", "bm1", &fixture("rbd-volume.xml"), "--live"]);
    assert!(
        err.contains("device not found: disk vdb not found"),
        "{err}"
    );
}

#[test]
fn attach_and_detach_interfaces() {
    let d = Daemon::start("");
    running(&d, "bm1");
    let out = d.virsh_ok(&[
        "attach-interface",
        "bm1",
        "bridge",
        "br-int",
        "--mac",
        "52:54:00:aa:00:01",
        "--model",
        "virtio",
        "--live",
        "--config",
    ]);
    assert!(out.contains("Interface attached successfully"), "{out}");
    d.virsh_ok(&["attach-device", "bm1", &fixture("ovs-port.xml"), "--live"]);
    let list = d.virsh_ok(&["domiflist", "bm1"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert_eq!(
        rows[1][1..],
        ["bridge", "br-int", "virtio", "52:54:00:aa:00:01"],
        "{list}"
    );
    assert_eq!(
        rows[2],
        [
            "tap9f8e7d6c-5b",
            "bridge",
            "br-int",
            "virtio",
            "fa:16:3e:12:34:56"
        ]
    );
    // an interface without a host-side name shows the DPU function's representor
    assert!(rows[1][0].starts_with("pf0vf"), "{list}");
    let stat = d.virsh_ok(&["domifstat", "bm1", "tap9f8e7d6c-5b"]);
    assert!(stat.contains("tap9f8e7d6c-5b rx_bytes "), "{stat}");
    let stat = d.virsh_ok(&["domifstat", "bm1", "52:54:00:aa:00:01"]);
    assert!(stat.contains("rx_packets"), "{stat}");
    assert_eq!(plugged_macs(&d).len(), 3);
    let dump = d.virsh_ok(&["dumpxml", "bm1"]);
    for a in ["net0", "net1", "net2"] {
        assert!(
            dump.contains(&format!("<alias name='{a}'/>")),
            "{a}: {dump}"
        );
    }
    let out = d.virsh_ok(&[
        "detach-interface",
        "bm1",
        "bridge",
        "--mac",
        "52:54:00:aa:00:01",
        "--live",
        "--config",
    ]);
    assert!(out.contains("Interface detached successfully"), "{out}");
    let out = d.virsh_ok(&["detach-device-alias", "bm1", "net2"]);
    assert!(
        out.contains("Device detach request sent successfully"),
        "{out}"
    );
    assert_eq!(plugged_macs(&d).len(), 1);
    let err = d.virsh_err(&["detach-device-alias", "bm1", "net9"]);
    assert!(err.contains("no device found with alias net9"), "{err}");
    // on a shut-off domain, attach-device without flags means "the running domain"
    d.virsh_ok(&["destroy", "bm1"]);
    let err = d.virsh_err(&["attach-device", "bm1", &fixture("ovs-port.xml")]);
    assert!(err.contains("domain is not running"), "{err}");
    d.virsh_ok(&["attach-device", "bm1", &fixture("ovs-port.xml"), "--config"]);
    d.virsh_ok(&["start", "bm1"]);
    assert!(plugged_macs(&d).contains(&"fa:16:3e:12:34:56".to_string()));
    let out = d.virsh_ok(&["update-device", "bm1", &fixture("ovs-port.xml"), "--live"]);
    assert!(out.contains("Device updated successfully"), "{out}");
}

#[test]
fn secret_commands() {
    let d = Daemon::start("");
    ceph_secret(&d);
    let list = d.virsh_ok(&["secret-list"]);
    assert!(
        list.contains(CEPH_UUID) && list.contains("ceph client.cinder secret"),
        "{list}"
    );
    let dump = d.virsh_ok(&["secret-dumpxml", CEPH_UUID]);
    assert!(
        dump.starts_with("<secret ephemeral='no' private='yes'>"),
        "{dump}"
    );
    let err = d.virsh_err(&["secret-get-value", CEPH_UUID]);
    assert!(err.contains("secret is private"), "{err}");
    let vol = d.file(
        "vol.xml",
        "<secret ephemeral='no' private='no'><usage type='volume'><volume>v1</volume></usage></secret>",
    );
    let out = d.virsh_ok(&["secret-define", vol.to_str().unwrap()]);
    let uuid = out.split_whitespace().nth(1).unwrap().to_string();
    let v = d.file("v", "passphrase");
    d.virsh_ok(&[
        "secret-set-value",
        &uuid,
        "--file",
        v.to_str().unwrap(),
        "--plain",
    ]);
    let got = d.virsh_ok(&["secret-get-value", &uuid, "--plain"]);
    assert_eq!(got.trim(), "passphrase");
    let out = d.virsh_ok(&["secret-undefine", &uuid]);
    assert!(out.contains(&format!("Secret {uuid} deleted")), "{out}");
    let err = d.virsh_err(&["secret-get-value", &uuid]);
    assert!(err.contains("Secret not found"), "{err}");
    // a disk that names the secret maps with it; a disk naming a missing one fails cleanly
    running(&d, "bm1");
    d.virsh_ok(&["attach-device", "bm1", &fixture("rbd-volume.xml"), "--live"]);
    d.virsh_ok(&["secret-undefine", CEPH_UUID]);
    d.virsh_ok(&["detach-device", "bm1", &fixture("rbd-volume.xml"), "--live"]);
    let err = d.virsh_err(&["attach-device", "bm1", &fixture("rbd-volume.xml"), "--live"]);
    assert!(
        err.contains(&format!("no secret with matching uuid '{CEPH_UUID}'")),
        "{err}"
    );
    assert_eq!(mapped_disks(&d).len(), 1);
}

/// The QoS the simulated lab holds for the disk mapped from `source`.
fn sim_qos(d: &Daemon, source: &str) -> serde_json::Value {
    for node in d.sim_state()["nodes"].as_object().unwrap().values() {
        for disk in node["disks"].as_object().unwrap().values() {
            if disk["spec"]["source"].as_str() == Some(source) {
                return disk["spec"]["qos"].clone();
            }
        }
    }
    panic!("no disk mapped from {source}");
}

/// `virsh blkdeviotune DOM DEV` as (field, value) pairs.
fn iotune(d: &Daemon, args: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut a = vec!["blkdeviotune"];
    a.extend_from_slice(args);
    d.virsh_ok(&a)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn block_io_limits_reach_the_disk_backend() {
    let d = Daemon::start("");
    let disk = "<disk type='network' device='disk'>\
        <source protocol='rbd' name='volumes/tuned'><host name='10.0.0.1' port='6789'/></source>\
        <target dev='vdb' bus='virtio'/>\
        <iotune><total_bytes_sec>10485760</total_bytes_sec><total_iops_sec>2000</total_iops_sec></iotune>\
        </disk>\n";
    let f = d.file("bm1.xml", &domain_xml("bm1", disk));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "bm1"]);
    // Mapped with its limits, in SPDK's units (MiB/s, I/Os per second).
    let q = sim_qos(&d, "rbd:volumes/tuned");
    assert_eq!(q["rw_ios_per_sec"], 2000, "{q}");
    assert_eq!(q["rw_mbytes_per_sec"], 10, "{q}");
    assert!(
        sim_qos(&d, "rbd:volumes/bm1-root").is_null(),
        "an untuned disk has none"
    );
    let t = iotune(&d, &["bm1", "vdb"]);
    assert_eq!(t["total_bytes_sec"], "10485760");
    assert_eq!(t["total_iops_sec"], "2000");
    assert_eq!(t["read_bytes_sec"], "0");

    // Live: the backend and the live XML; a read limit replaces the total.
    d.virsh_ok(&[
        "blkdeviotune",
        "bm1",
        "vdb",
        "--read-bytes-sec",
        "4194304",
        "--total-iops-sec",
        "3000",
        "--live",
    ]);
    let q = sim_qos(&d, "rbd:volumes/tuned");
    assert_eq!(
        (
            &q["rw_ios_per_sec"],
            &q["rw_mbytes_per_sec"],
            &q["r_mbytes_per_sec"]
        ),
        (&3000.into(), &0.into(), &4.into()),
        "{q}"
    );
    let live = d.virsh_ok(&["dumpxml", "bm1"]);
    assert!(
        live.contains("<read_bytes_sec>4194304</read_bytes_sec>")
            && !live.contains("<total_bytes_sec>"),
        "{live}"
    );
    // The persistent definition is untouched by a live change, and changed by --config.
    let config = d.virsh_ok(&["dumpxml", "bm1", "--inactive"]);
    assert!(
        config.contains("<total_bytes_sec>10485760</total_bytes_sec>"),
        "{config}"
    );
    d.virsh_ok(&[
        "blkdeviotune",
        "bm1",
        "vdb",
        "--total-iops-sec",
        "0",
        "--config",
    ]);
    assert_eq!(
        iotune(&d, &["bm1", "vdb", "--config"])["total_iops_sec"],
        "0"
    );
    assert_eq!(
        iotune(&d, &["bm1", "vdb", "--live"])["total_iops_sec"],
        "3000"
    );

    // What SPDK cannot apply exactly is refused, naming the field; nothing changes.
    for (flag, value, field) in [
        ("--total-iops-sec", "1500", "total_iops_sec"),
        ("--read-iops-sec", "1000", "read_iops_sec"),
        ("--write-bytes-sec", "1000", "write_bytes_sec"),
        ("--total-bytes-sec-max", "20971520", "total_bytes_sec_max"),
    ] {
        let e = d.virsh_err(&["blkdeviotune", "bm1", "vdb", flag, value, "--live"]);
        assert!(
            e.contains("unsupported configuration") && e.contains(field),
            "{flag}: {e}"
        );
    }
    assert_eq!(sim_qos(&d, "rbd:volumes/tuned")["rw_ios_per_sec"], 3000);
    let e = d.virsh_err(&["blkdeviotune", "bm1", "vdz"]);
    assert!(e.contains("disk 'vdz' was not found"), "{e}");

    // Bad <iotune> in a definition: libvirt's XML errors, or unsupported at define.
    for (iotune, want) in [
        (
            "<total_iops_sec>-1000</total_iops_sec>",
            "disk iotune field 'total_iops_sec' must be an integer",
        ),
        (
            "<total_iops_sec>1000</total_iops_sec><read_iops_sec>1000</read_iops_sec>",
            "total and read/write of iops_sec cannot be set at the same time",
        ),
        ("<write_iops_sec>1000</write_iops_sec>", "write_iops_sec"),
    ] {
        let xml = domain_xml(
            "bad",
            &disk.replace(
                "<total_bytes_sec>10485760</total_bytes_sec><total_iops_sec>2000</total_iops_sec>",
                iotune,
            ),
        );
        let f = d.file("bad.xml", &xml);
        let e = d.virsh_err(&["define", f.to_str().unwrap()]);
        assert!(e.contains(want), "{iotune}: {e}");
    }
}
