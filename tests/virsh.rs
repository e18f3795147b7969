//! Black-box tests: the real daemon driven by the real `virsh` (libvirt-clients).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{domain_xml, wait_for, Daemon};

fn define(d: &Daemon, name: &str) {
    let f = d.file(&format!("{name}.xml"), &domain_xml(name, ""));
    let out = d.virsh_ok(&["define", f.to_str().unwrap()]);
    assert!(out.contains(&format!("Domain '{name}' defined")), "{out}");
}

fn state(d: &Daemon, name: &str) -> String {
    d.virsh_ok(&["domstate", "--reason", name])
        .trim()
        .to_string()
}

#[test]
fn lifecycle_table() {
    let d = Daemon::start("");
    define(&d, "bm1");
    assert_eq!(state(&d, "bm1"), "shut off (unknown)");
    assert!(d
        .virsh_ok(&["start", "bm1"])
        .contains("Domain 'bm1' started"));
    assert_eq!(state(&d, "bm1"), "running (booted)");
    assert_eq!(d.sim_mapped(), (1, 1), "one disk mapped, one NIC plugged");
    let id1 = d.virsh_ok(&["domid", "bm1"]).trim().to_string();
    assert!(id1.parse::<i32>().unwrap() > 0);

    // Wrong-state errors, with libvirt's texts.
    let e = d.virsh_err(&["start", "bm1"]);
    assert!(e.contains("Domain is already active"), "{e}");
    let e = d.virsh_err(&["suspend", "bm1"]);
    assert!(
        e.contains("Operation not supported") && e.contains("bare-metal"),
        "{e}"
    );

    // reboot and reset keep it running.
    d.virsh_ok(&["reboot", "bm1"]);
    d.virsh_ok(&["reset", "bm1"]);
    assert_eq!(state(&d, "bm1"), "running (booted)");

    // shutdown returns at once; the watcher sees power off.
    d.virsh_ok(&["shutdown", "bm1"]);
    wait_for(10, "shutdown to complete", || {
        state(&d, "bm1") == "shut off (shutdown)"
    });
    assert_eq!(d.sim_mapped(), (0, 0), "hardware released after shutdown");
    assert_eq!(d.virsh_ok(&["domid", "bm1"]).trim(), "-");

    // A fresh id on every start.
    d.virsh_ok(&["start", "bm1"]);
    let id2 = d.virsh_ok(&["domid", "bm1"]).trim().to_string();
    assert_ne!(id1, id2);

    // Started paused: hardware staged, power off; resume powers on.
    d.virsh_ok(&["destroy", "bm1"]);
    assert_eq!(state(&d, "bm1"), "shut off (destroyed)");
    d.virsh_ok(&["start", "--paused", "bm1"]);
    assert_eq!(state(&d, "bm1"), "paused (user)");
    assert_eq!(d.sim_mapped(), (1, 1));
    let node = bound_node(&d, "bm1");
    assert_eq!(d.sim_power(&node), "Off");
    d.virsh_ok(&["resume", "bm1"]);
    assert_eq!(state(&d, "bm1"), "running (unpaused)");
    assert_eq!(d.sim_power(&node), "On");
    let e = d.virsh_err(&["resume", "bm1"]);
    assert!(e.contains("domain is already running"), "{e}");

    d.virsh_ok(&["destroy", "bm1"]);
    assert_eq!(d.sim_power(&node), "Off");
    assert_eq!(d.sim_mapped(), (0, 0));
    for cmd in ["destroy", "shutdown", "reboot", "reset"] {
        let e = d.virsh_err(&[cmd, "bm1"]);
        assert!(
            e.contains("Requested operation is not valid: domain is not running"),
            "{cmd}: {e}"
        );
    }
    d.virsh_ok(&["undefine", "bm1"]);
    let e = d.virsh_err(&["dominfo", "bm1"]);
    assert!(e.contains("failed to get domain 'bm1'"), "{e}");
}

fn bound_node(d: &Daemon, name: &str) -> String {
    let x = d.virsh_ok(&["dumpxml", name]);
    let i = x.find("<metalvirt:node").expect("live XML names the node");
    let rest = &x[i..];
    let j = rest.find("name='").unwrap() + 6;
    rest[j..j + rest[j..].find('\'').unwrap()].to_string()
}

#[test]
fn transient_create_and_lists() {
    let d = Daemon::start("");
    define(&d, "p1");
    define(&d, "p2");
    let f = d.file("t1.xml", &domain_xml("t1", ""));
    d.virsh_ok(&["create", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "p1"]);
    d.virsh_ok(&["autostart", "p2"]);

    let names = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = d
            .virsh_ok(&[&["list", "--name"], args].concat())
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&[]), ["p1", "t1"]);
    assert_eq!(names(&["--all"]), ["p1", "p2", "t1"]);
    assert_eq!(names(&["--inactive"]), ["p2"]);
    assert_eq!(names(&["--all", "--transient"]), ["t1"]);
    assert_eq!(names(&["--all", "--persistent"]), ["p1", "p2"]);
    assert_eq!(names(&["--all", "--state-running"]), ["p1", "t1"]);
    assert_eq!(names(&["--all", "--state-shutoff"]), ["p2"]);
    assert_eq!(names(&["--all", "--state-paused"]), Vec::<String>::new());
    assert_eq!(names(&["--all", "--autostart"]), ["p2"]);
    assert_eq!(names(&["--all", "--no-autostart"]), ["p1", "t1"]);
    assert_eq!(names(&["--all", "--with-snapshot"]), Vec::<String>::new());
    assert_eq!(names(&["--all", "--without-snapshot"]), ["p1", "p2", "t1"]);
    assert_eq!(
        names(&["--all", "--with-managed-save"]),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&["--all", "--without-managed-save"]),
        ["p1", "p2", "t1"]
    );

    let table = d.virsh_ok(&["list", "--all"]);
    assert!(
        table.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w == ["-", "p2", "shut", "off"]
        }),
        "{table}"
    );

    // Transient domains cannot be undefined; they vanish when stopped.
    let e = d.virsh_err(&["undefine", "t1"]);
    assert!(e.contains("cannot undefine transient domain"), "{e}");
    let e = d.virsh_err(&["autostart", "t1"]);
    assert!(
        e.contains("cannot set autostart for transient domain"),
        "{e}"
    );
    d.virsh_ok(&["destroy", "t1"]);
    assert_eq!(names(&["--all"]), ["p1", "p2"]);

    // Undefining a running persistent domain makes it transient.
    d.virsh_ok(&["undefine", "p1"]);
    assert_eq!(names(&["--all", "--transient"]), ["p1"]);
    d.virsh_ok(&["destroy", "p1"]);
    assert_eq!(names(&["--all"]), ["p2"]);
}

#[test]
fn dominfo_dumpxml_and_validation() {
    let d = Daemon::start("");
    define(&d, "info1");
    let info = d.virsh_ok(&["dominfo", "info1"]);
    for want in [
        "Name:           info1",
        "State:          shut off",
        "CPU(s):         2",
        "Max memory:     2097152 KiB",
        "Persistent:     yes",
        "Autostart:      disable",
    ] {
        assert!(info.contains(want), "missing {want:?} in\n{info}");
    }
    d.virsh_ok(&["start", "info1"]);
    let live = d.virsh_ok(&["dumpxml", "info1"]);
    assert!(live.contains("<domain type='kvm' id='"), "{live}");
    assert!(live.contains("<alias name='virtio-disk0'/>"), "{live}");
    assert!(live.contains("<alias name='net0'/>"), "{live}");
    assert!(live.contains("https://metalvirt.dev/xmlns/1"), "{live}");
    let inactive = d.virsh_ok(&["dumpxml", "--inactive", "info1"]);
    assert!(!inactive.contains(" id='"), "{inactive}");
    assert!(!inactive.contains("virtio-disk0"), "{inactive}");
    assert!(!inactive.contains("metalvirt:node"), "{inactive}");
    common::virt_xml_validate(d.dir.path(), &live, "domain");
    common::virt_xml_validate(d.dir.path(), &inactive, "domain");
    common::virt_xml_validate(d.dir.path(), &d.virsh_ok(&["capabilities"]), "capability");
    common::virt_xml_validate(
        d.dir.path(),
        &d.virsh_ok(&["domcapabilities"]),
        "domaincaps",
    );
    common::virt_xml_validate(
        d.dir.path(),
        &d.virsh_ok(&["domcapabilities", "--machine", "q35"]),
        "domaincaps",
    );
    // The MAC generated at define time is stable.
    let mac = |x: &str| x[x.find("<mac address='").unwrap() + 14..][..17].to_string();
    assert_eq!(mac(&live), mac(&inactive));
    assert!(mac(&live).starts_with("52:54:00:"));

    let ver = d.virsh_ok(&["version", "--daemon"]);
    assert!(ver.contains("Using API: QEMU"), "{ver}");
    assert!(ver.contains("Running hypervisor: QEMU 8.2.2"), "{ver}");
    let node = d.virsh_ok(&["nodeinfo"]);
    assert!(node.contains("CPU(s):              256"), "{node}");
    assert!(node.contains("NUMA cell(s):        4"), "{node}");
    // The simulation is labelled where clients look.
    assert!(d.virsh_ok(&["sysinfo"]).contains("SIMULATED lab"));
    let info = d.virsh_ok(&["dominfo", "info1"]);
    assert!(
        info.contains("Messages:") && info.contains("SIMULATED lab"),
        "{info}"
    );
    d.virsh_ok(&["hostname"]);
}

#[test]
fn autostart_desc_and_metadata() {
    let d = Daemon::start("");
    define(&d, "m1");
    d.virsh_ok(&["autostart", "m1"]);
    assert!(d
        .virsh_ok(&["dominfo", "m1"])
        .contains("Autostart:      enable"));
    assert!(d.config_dir().join("autostart/m1").exists());
    d.virsh_ok(&["autostart", "--disable", "m1"]);
    assert!(!d.config_dir().join("autostart/m1").exists());

    assert_eq!(
        d.virsh_ok(&["desc", "m1"]).trim(),
        "No description for domain: m1"
    );
    d.virsh_ok(&["desc", "m1", "--config", "--new-desc", "rack 4 slot 2"]);
    assert_eq!(d.virsh_ok(&["desc", "m1"]).trim(), "rack 4 slot 2");
    d.virsh_ok(&[
        "desc",
        "m1",
        "--config",
        "--title",
        "--new-desc",
        "db server",
    ]);
    assert_eq!(d.virsh_ok(&["desc", "m1", "--title"]).trim(), "db server");
    let x = d.virsh_ok(&["dumpxml", "--inactive", "m1"]);
    assert!(x.contains("<title>db server</title>"), "{x}");
    assert!(
        x.contains("<description>rack 4 slot 2</description>"),
        "{x}"
    );

    let uri = "http://example.com/app/1";
    let e = d.virsh_err(&["metadata", "m1", uri]);
    assert!(e.contains("metadata not found"), "{e}");
    d.virsh_ok(&[
        "metadata",
        "m1",
        uri,
        "--key",
        "app",
        "--set",
        "<owner team='storage'><tier>gold</tier></owner>",
    ]);
    let m = d.virsh_ok(&["metadata", "m1", uri]);
    assert!(
        m.contains("<owner") && m.contains("<tier>gold</tier>"),
        "{m}"
    );
    let x = d.virsh_ok(&["dumpxml", "m1"]);
    assert!(
        x.contains("xmlns:app='http://example.com/app/1'")
            || x.contains("xmlns:app=\"http://example.com/app/1\""),
        "{x}"
    );
    d.virsh_ok(&["metadata", "m1", uri, "--remove"]);
    assert!(d
        .virsh_err(&["metadata", "m1", uri])
        .contains("metadata not found"));

    // Live metadata of a running domain does not touch the config.
    d.virsh_ok(&["start", "m1"]);
    d.virsh_ok(&["desc", "m1", "--live", "--new-desc", "live only"]);
    assert_eq!(d.virsh_ok(&["desc", "m1"]).trim(), "live only");
    assert_eq!(
        d.virsh_ok(&["desc", "m1", "--config"]).trim(),
        "rack 4 slot 2"
    );
}

#[test]
fn read_only_socket_refuses_changes() {
    let d = Daemon::start("");
    define(&d, "ro1");
    let ro = d.ro_uri();
    let out = common::virsh(&ro, &["list", "--all"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ro1"));
    assert!(common::virsh(&ro, &["dumpxml", "ro1"]).status.success());
    for args in [
        vec!["start", "ro1"],
        vec!["undefine", "ro1"],
        vec!["autostart", "ro1"],
    ] {
        let o = common::virsh(&ro, &args);
        assert!(!o.status.success(), "{args:?} allowed on ro socket");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("operation forbidden: read only access prevents"),
            "{args:?}: {e}"
        );
    }
    let e = common::virsh(&ro, &["dumpxml", "--security-info", "ro1"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("operation forbidden"));
    // `virsh -r` on the rw socket is read-only too.
    let o = Command::new("virsh")
        .args(["-r", "-c", &d.uri(), "start", "ro1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn bad_xml_and_duplicates_are_refused() {
    let d = Daemon::start("");
    define(&d, "dup");
    let cases = [
        ("<domain type='kvm'><name>x</name>", "XML error"),
        ("<dom type='kvm'/>", "XML error"),
        ("<domain type='kvm'><memory>1024</memory><os><type>hvm</type></os></domain>", "name"),
        ("<domain type='kvm'><name>a/b</name><memory>1024</memory><os><type>hvm</type></os></domain>", "'/'"),
        ("<domain type='kvm'><name>n</name><os><type>hvm</type></os></domain>", "emory"),
    ];
    for (i, (xml, want)) in cases.iter().enumerate() {
        let f = d.file(&format!("bad{i}.xml"), xml);
        let e = d.virsh_err(&["define", f.to_str().unwrap()]);
        assert!(e.contains(want), "case {i}: {e}");
    }
    // Same name, other uuid.
    let f = d.file("dup2.xml", &domain_xml("dup", ""));
    let e = d.virsh_err(&["define", f.to_str().unwrap()]);
    assert!(
        e.contains("operation failed: domain 'dup' already exists with uuid"),
        "{e}"
    );
    // Same uuid, other name.
    let uuid = d.virsh_ok(&["domuuid", "dup"]).trim().to_string();
    let x = domain_xml("other", "").replace(
        "<name>other</name>",
        &format!("<name>other</name><uuid>{uuid}</uuid>"),
    );
    let f = d.file("dup3.xml", &x);
    let e = d.virsh_err(&["define", f.to_str().unwrap()]);
    assert!(
        e.contains(&format!("domain 'dup' is already defined with uuid {uuid}")),
        "{e}"
    );
    // Nothing changed.
    assert_eq!(d.virsh_ok(&["list", "--all", "--name"]).trim(), "dup");
    let e = d.virsh_err(&["start", "nosuch"]);
    assert!(e.contains("failed to get domain 'nosuch'"), "{e}");
}

#[test]
fn events_are_delivered_to_virsh_event_loop() {
    let d = Daemon::start("");
    let mut ev = Command::new("virsh")
        .args([
            "-c",
            &d.uri(),
            "event",
            "--loop",
            "--all",
            "--timeout",
            "60",
        ])
        .env("LC_ALL", "C")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = ev.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    define(&d, "ev1");
    d.virsh_ok(&["start", "ev1"]);
    d.virsh_ok(&["reboot", "ev1"]);
    d.virsh_ok(&["destroy", "ev1"]);
    d.virsh_ok(&["start", "--paused", "ev1"]);
    d.virsh_ok(&["resume", "ev1"]);
    d.virsh_ok(&["shutdown", "ev1"]);
    wait_for(10, "shutoff", || state(&d, "ev1").starts_with("shut off"));
    d.virsh_ok(&["undefine", "ev1"]);
    let want = [
        "event 'lifecycle' for domain 'ev1': Defined Added",
        "event 'lifecycle' for domain 'ev1': Started Booted",
        "event 'reboot' for domain 'ev1'",
        "event 'lifecycle' for domain 'ev1': Stopped Destroyed",
        "event 'lifecycle' for domain 'ev1': Started Booted",
        "event 'lifecycle' for domain 'ev1': Suspended Paused",
        "event 'lifecycle' for domain 'ev1': Resumed Unpaused",
        "event 'lifecycle' for domain 'ev1': Shutdown Finished",
        "event 'lifecycle' for domain 'ev1': Stopped Shutdown",
        "event 'lifecycle' for domain 'ev1': Undefined Removed",
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.starts_with("event ") => got.push(l),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = ev.kill();
    let _ = ev.wait();
    assert_eq!(got, want);
}

#[test]
fn rollback_after_injected_disk_failure() {
    let d = Daemon::start("[sim]\nfail_disk_sources = [\"broken-volume\"]\n");
    let extra = "    <disk type='network' device='disk'><source protocol='rbd' name='volumes/broken-volume'><host name='10.0.0.1'/></source><target dev='vdb' bus='virtio'/></disk>\n";
    let f = d.file("rb.xml", &domain_xml("rb", extra));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    let e = d.virsh_err(&["start", "rb"]);
    assert!(
        e.contains("operation failed") && e.contains("broken-volume"),
        "{e}"
    );
    assert_eq!(state(&d, "rb"), "shut off (failed)");
    assert_eq!(d.sim_mapped(), (0, 0), "nothing left mapped or plugged");
    for n in 1..=4 {
        assert_eq!(d.sim_power(&format!("node-{n}")), "Off");
    }
    // The status directory follows the status log within an idle moment.
    let no_status = || {
        std::fs::read_dir(d.state_dir().join("domains"))
            .unwrap()
            .next()
            .is_none()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !no_status() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(no_status(), "no live status left");
    // The node is free again: another domain can use all four.
    for i in 0..4 {
        let f = d.file(&format!("ok{i}.xml"), &domain_xml(&format!("ok{i}"), ""));
        d.virsh_ok(&["create", f.to_str().unwrap()]);
    }
    let f = d.file("ok4.xml", &domain_xml("ok4", ""));
    let e = d.virsh_err(&["create", f.to_str().unwrap()]);
    assert!(e.contains("no free node"), "{e}");
}

#[test]
fn power_on_failure_rolls_back_everything() {
    let d = Daemon::start("[sim]\nnodes = 1\nfail_power_on_nodes = [\"node-1\"]\n");
    define(&d, "pf");
    let e = d.virsh_err(&["start", "pf"]);
    assert!(e.contains("cannot power on node node-1"), "{e}");
    assert_eq!(d.sim_mapped(), (0, 0));
    assert_eq!(state(&d, "pf"), "shut off (failed)");
}

#[test]
fn restart_keeps_running_domains_and_autostarts() {
    let mut d = Daemon::start("");
    define(&d, "keep");
    define(&d, "auto");
    define(&d, "idle");
    d.virsh_ok(&["start", "keep"]);
    d.virsh_ok(&["autostart", "auto"]);
    let id = d.virsh_ok(&["domid", "keep"]).trim().to_string();
    let node = bound_node(&d, "keep");
    let boots = d.sim_state()["nodes"][&node]["boots"].as_u64().unwrap();

    d.restart();
    assert_eq!(state(&d, "keep"), "running (booted)");
    assert_eq!(d.virsh_ok(&["domid", "keep"]).trim(), id);
    assert_eq!(bound_node(&d, "keep"), node);
    assert_eq!(
        d.sim_state()["nodes"][&node]["boots"].as_u64().unwrap(),
        boots,
        "server not rebooted"
    );
    wait_for(10, "autostart", || state(&d, "auto") == "running (booted)");
    assert_eq!(state(&d, "idle"), "shut off (unknown)");

    d.kill_and_restart();
    assert_eq!(state(&d, "keep"), "running (booted)");
    assert_eq!(state(&d, "auto"), "running (booted)");
    // Ids stay unique after a restart.
    d.virsh_ok(&["start", "idle"]);
    let ids: Vec<String> = ["keep", "auto", "idle"]
        .iter()
        .map(|n| d.virsh_ok(&["domid", n]).trim().to_string())
        .collect();
    let mut u = ids.clone();
    u.dedup();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 3, "{ids:?}");
    d.virsh_ok(&["destroy", "keep"]);
    assert_eq!(state(&d, "keep"), "shut off (destroyed)");
}

#[test]
fn hard_reboot_sequence_keeps_the_node() {
    let d = Daemon::start("");
    define(&d, "hr");
    d.virsh_ok(&["start", "hr"]);
    let node = bound_node(&d, "hr");
    let xml = d.virsh_ok(&["dumpxml", "--inactive", "hr"]);
    d.virsh_ok(&["destroy", "hr"]);
    // Others may start in between; the sticky binding still wins when the node is free.
    define(&d, "other");
    d.virsh_ok(&["start", "other"]);
    d.virsh_ok(&["undefine", "--nvram", "--managed-save", "hr"]);
    let f = d.file("hr2.xml", &xml);
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "hr"]);
    assert_eq!(bound_node(&d, "hr"), node);
}

#[test]
fn define_validate_uses_our_schema() {
    let d = Daemon::start("");
    let good = d.file("good.xml", &domain_xml("valid1", ""));
    assert!(d
        .virsh_ok(&["define", "--validate", good.to_str().unwrap()])
        .contains("defined"));
    // Parses, but a disk of an unknown type is not in the schema.
    let bad = domain_xml("valid2", "").replace("<disk type='network'", "<disk type='bogus'");
    let bad = d.file("bad.xml", &bad);
    let e = d.virsh_err(&["define", "--validate", bad.to_str().unwrap()]);
    assert!(
        e.contains("XML document failed to validate against schema"),
        "{e}"
    );
    assert!(!d.virsh_ok(&["list", "--all", "--name"]).contains("valid2"));
}

#[test]
fn autodestroy_runs_end_with_their_connection() {
    let d = Daemon::start("");
    let f = d.file("ad1.xml", &domain_xml("ad1", ""));
    // virsh exits right after the call, closing its connection.
    d.virsh_ok(&["create", "--autodestroy", f.to_str().unwrap()]);
    define(&d, "ad2");
    d.virsh_ok(&["start", "--autodestroy", "ad2"]);
    define(&d, "keep");
    d.virsh_ok(&["start", "keep"]);
    wait_for(10, "auto-destroy", || {
        !d.virsh_ok(&["list", "--all", "--name"]).contains("ad1")
            && state(&d, "ad2") == "shut off (destroyed)"
    });
    assert_eq!(state(&d, "keep"), "running (booted)");
    assert_eq!(d.sim_mapped(), (1, 1), "only 'keep' still holds hardware");
}

#[test]
fn shutdown_right_after_a_reset_is_seen() {
    // The watcher polls every 2 s: it cannot read the server On between the reset and the
    // shutdown (50 ms later in the simulation), which once left the restart's grace period
    // (power_on_timeout) hiding the Off reading.
    let d = Daemon::start("[watcher]\ninterval_ms = 2000\n");
    define(&d, "bm1");
    d.virsh_ok(&["start", "bm1"]);
    d.virsh_ok(&["reset", "bm1"]);
    d.virsh_ok(&["shutdown", "bm1"]);
    wait_for(8, "shutdown after a reset to complete", || {
        state(&d, "bm1") == "shut off (shutdown)"
    });
}
