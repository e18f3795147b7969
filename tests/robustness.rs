//! Hostile and broken clients against the real daemon (issue: no client takes a server
//! down): a client that stops reading, deep and wide XML, a flood of read-only connections.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{decode_error, domain_xml, xdr_string, Daemon, Raw};

const DEFINE_XML: i32 = 11;
const GET_XML_DESC: i32 = 14;
const LOOKUP_BY_NAME: i32 = 23;
const GET_LIB_VERSION: i32 = 157;
const VIR_ERR_XML_ERROR: i32 = 27;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Defines `xml` and returns the reply status and payload.
fn define(raw: &mut Raw, xml: &str) -> (u32, Vec<u8>) {
    raw.call(DEFINE_XML, &xdr_string(xml))
}

/// remote_nonnull_domain from a LOOKUP_BY_NAME reply.
fn lookup(raw: &mut Raw, name: &str) -> Vec<u8> {
    let (st, p) = raw.call(LOOKUP_BY_NAME, &xdr_string(name));
    assert_eq!(st, 0, "lookup {name}: {:?}", decode_error(&p));
    p
}

fn alive(d: &Daemon) {
    let mut r = Raw::connect(&d.socket());
    r.open();
    let (st, _) = r.call(GET_LIB_VERSION, &[]);
    assert_eq!(st, 0, "daemon must still answer");
}

#[test]
fn a_client_that_stops_reading_is_bounded_and_dropped() {
    let d = Daemon::start("client_write_timeout_s = 3\nmax_client_output_bytes = 4194304\n");
    let pid = d.pid();
    let mut rw = Raw::connect(&d.socket());
    rw.open();
    // A domain with a 1 MiB description: each GET_XML_DESC reply is over 1 MiB.
    let big = "x".repeat(1 << 20);
    let xml = domain_xml("big", "").replace(
        "<memory",
        &format!("<description>{big}</description>\n  <memory"),
    );
    let (st, p) = define(&mut rw, &xml);
    assert_eq!(st, 0, "{:?}", decode_error(&p));
    let dom = lookup(&mut rw, "big");
    let baseline = rss_kib(pid);

    // The slow client, on the read-only socket anyone may open: 2,500 calls, no reads.
    let mut slow = Raw::connect(&d.ro_socket());
    slow.open();
    let mut args = dom.clone();
    args.extend_from_slice(&0u32.to_be_bytes());
    let mut writer = slow.s.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let flood = std::thread::spawn(move || {
        let mut sent = 0;
        for serial in 1..=2500u32 {
            let mut f = Vec::new();
            f.extend_from_slice(&((28 + args.len()) as u32).to_be_bytes());
            for w in [0x2000_8086u32, 1, GET_XML_DESC as u32, 0, serial, 0] {
                f.extend_from_slice(&w.to_be_bytes());
            }
            f.extend_from_slice(&args);
            if writer.write_all(&f).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });

    // Meanwhile a well-behaved client keeps getting answers, and memory stays bounded.
    let mut worst = Duration::ZERO;
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = Instant::now();
        let (st, _) = rw.call(GET_LIB_VERSION, &[]);
        assert_eq!(st, 0);
        worst = worst.max(t.elapsed());
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = flood.join().unwrap();
    assert!(
        sent < 2500,
        "the daemon stopped taking calls from a client that does not read (sent {sent})"
    );
    // Loose bound (the test machine is shared); the benchmark records the real figures.
    assert!(
        worst < Duration::from_secs(1),
        "a well-behaved client waited {worst:?}"
    );
    assert!(
        peak < 256 * 1024,
        "RSS grew to {peak} KiB with one slow reader (baseline {baseline} KiB)"
    );
    // It has taken nothing for the write time limit: it is dropped and its memory freed.
    common::wait_for(15, "the slow client to be dropped", || {
        d.log().contains("took no output for 3s")
    });
    let mut buf = [0u8; 65536];
    slow.s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // What was in flight may still be in the socket buffers; then EOF.
    let mut eof = false;
    let mut drained = 0usize;
    for _ in 0..100_000 {
        match slow.s.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => drained += n,
            // Closed with our unread calls still in its receive queue: a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                eof = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(
        eof,
        "the slow client's connection must be closed (read {drained} bytes):\n{}",
        d.log()
    );
    common::wait_for(10, "memory to come back", || {
        rss_kib(pid) < baseline + 48 * 1024
    });
    eprintln!(
        "slow reader: baseline {baseline} KiB, peak {peak} KiB, after {} KiB, worst call {worst:?}, calls sent {sent}",
        rss_kib(pid)
    );
    alive(&d);
}

fn nested_metadata(levels: usize) -> String {
    let mut m = String::from("<metadata><x:a xmlns:x='urn:x'>");
    for _ in 0..levels {
        m.push_str("<x:n>");
    }
    for _ in 0..levels {
        m.push_str("</x:n>");
    }
    m.push_str("</x:a></metadata>");
    domain_xml("deep", "").replace("<memory", &format!("{m}\n  <memory"))
}

#[test]
fn deep_and_wide_xml_is_refused_and_the_daemon_lives() {
    let d = Daemon::start("");
    let mut r = Raw::connect(&d.socket());
    r.open();
    for levels in [300, 100_000] {
        let (st, p) = define(&mut r, &nested_metadata(levels));
        assert_eq!(st, 1, "{levels} levels must be refused");
        let (code, _, msg) = decode_error(&p);
        assert_eq!(code, VIR_ERR_XML_ERROR, "{msg}");
        assert!(msg.contains("limit of 256 levels"), "{msg}");
    }
    // Within the limit it is stored and formatted back.
    let (st, p) = define(&mut r, &nested_metadata(200));
    assert_eq!(st, 0, "{:?}", decode_error(&p));
    let wide = domain_xml("wide", "").replace(
        "<memory",
        &format!(
            "<metadata><x:a xmlns:x='urn:x'>{}</x:a></metadata>\n  <memory",
            "<x:e/>".repeat(60_000)
        ),
    );
    let (st, p) = define(&mut r, &wide);
    assert_eq!(st, 1);
    let (code, _, msg) = decode_error(&p);
    assert_eq!(code, VIR_ERR_XML_ERROR, "{msg}");
    assert!(msg.contains("limit of 50000 elements"), "{msg}");
    alive(&d);
    // After a restart the stored one still loads.
    let out = d.virsh_ok(&["dumpxml", "deep"]);
    assert_eq!(out.matches("<x:n").count(), 200);
}

#[test]
fn a_read_only_flood_leaves_read_write_slots() {
    let d = Daemon::start("max_clients = 40\nmax_readonly_clients = 20\n");
    let mut held = Vec::new();
    for _ in 0..35 {
        held.push(UnixStream::connect(d.ro_socket()).unwrap());
    }
    // Those past the read-only cap are closed at once.
    let mut closed = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 4];
        if matches!(s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 15,
        "read-only connections past max_readonly_clients"
    );
    // nova still gets in, and does its work.
    let out = d.virsh_ok(&["list", "--all"]);
    assert!(out.contains("Name"), "{out}");
    alive(&d);
    assert!(d.log().contains("too many read-only clients"));
    // Connections are logged with who made them.
    let uid = nix_uid();
    assert!(
        d.log().contains(&format!("uid {uid} pid")),
        "peer credentials in the log"
    );
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn mutating_calls_leave_an_audit_line() {
    let d = Daemon::start("");
    d.virsh_ok(&[
        "define",
        d.file("a.xml", &domain_xml("audited", ""))
            .to_str()
            .unwrap(),
    ]);
    d.virsh_ok(&["start", "audited"]);
    d.virsh_ok(&["destroy", "audited"]);
    let e = d.virsh_err(&["destroy", "audited"]);
    assert!(e.contains("not running"), "{e}");
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("metalvirt::audit"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("virDomainDefineXML")
            && l.contains("domain 'audited'")
            && l.contains("ok")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("virDomainDestroy")
            && l.contains("refused")
            && l.contains("code=55")),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("uid ")), "{lines:#?}");
    // Reads are not audited.
    assert!(!lines.iter().any(|l| l.contains("virConnectListAllDomains")));
}

fn pinned_xml(name: &str, node: &str) -> String {
    domain_xml(name, "").replace(
        "<memory",
        &format!(
            "<metadata><metalvirt:node xmlns:metalvirt='https://metalvirt.dev/xmlns/1' name='{node}'/></metadata>\n  <memory"
        ),
    )
}

#[test]
fn destroy_cancels_a_start_hanging_on_its_bmc() {
    let d = Daemon::start("job_wait_timeout_s = 2\n[sim]\nhang_power_on_nodes = [\"node-2\"]\n");
    let f = d.file("h.xml", &pinned_xml("hang", "node-2"));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    let uri = d.uri();
    let start = std::thread::spawn(move || common::virsh(&uri, &["start", "hang"]));
    // The disk and NIC are mapped, then the BMC never answers the power-on.
    common::wait_for(10, "the start to reach its BMC", || {
        d.sim_mapped() == (1, 1)
    });
    // Anything else that needs the domain waits for the lock, then times out like libvirt.
    let t = Instant::now();
    let e = d.virsh_err(&["autostart", "hang"]);
    assert!(
        e.contains("cannot acquire state change lock (held by virDomainCreate)"),
        "{e}"
    );
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    // A destroy cancels the start, which rolls back: back within a moment.
    let t = Instant::now();
    d.virsh_ok(&["destroy", "hang"]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "destroy took {took:?}");
    eprintln!("destroy during a hanging start returned in {took:?}");
    let out = start.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("operation aborted"), "{err}");
    assert_eq!(d.sim_mapped(), (0, 0), "nothing stays mapped");
    assert_eq!(d.sim_power("node-2"), "Off");
    let st = d.virsh_ok(&["domstate", "--reason", "hang"]);
    assert!(st.contains("shut off (destroyed)"), "{st}");
    // The domain is usable again.
    d.virsh_ok(&["autostart", "hang"]);
}

fn status_file(d: &Daemon, name: &str) -> std::path::PathBuf {
    let uuid = d.virsh_ok(&["domuuid", name]).trim().to_string();
    d.state_dir().join("domains").join(format!("{uuid}.json"))
}

#[test]
fn an_unreadable_status_quarantines_the_domain_and_never_touches_its_server() {
    let mut d = Daemon::start("");
    let f = d.file("q.xml", &pinned_xml("q", "node-3"));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "q"]);
    assert_eq!(d.sim_mapped(), (1, 1));
    let status = status_file(&d, "q");
    d.stop();
    std::fs::write(&status, b"{\"uuid\": \"torn").unwrap();
    d.restart();
    // Left exactly as it was: powered, disk mapped, NIC plugged.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.sim_power("node-3"), "On");
    assert_eq!(
        d.sim_mapped(),
        (1, 1),
        "reconcile must not reclaim its disk and NIC"
    );
    let info = d.virsh_ok(&["dominfo", "q"]);
    assert!(info.contains("no state"), "{info}");
    assert!(
        info.contains("quarantined: its live status cannot be read"),
        "{info}"
    );
    assert!(d.log().contains("quarantined"), "logged");
    for op in [&["start", "q"][..], &["destroy", "q"], &["undefine", "q"]] {
        let e = d.virsh_err(op);
        assert!(e.contains("domain is quarantined"), "{op:?}: {e}");
    }
    // Its node stays reserved.
    let g = d.file("g.xml", &pinned_xml("guest", "node-3"));
    d.virsh_ok(&["define", g.to_str().unwrap()]);
    let e = d.virsh_err(&["start", "guest"]);
    assert!(e.contains("in use"), "{e}");
    // The operator releases it: the daemon forgets the run; its disk and NIC are reclaimed
    // as orphans, the server's power is left to the operator.
    d.stop();
    std::fs::rename(&status, status.with_extension("json.release")).unwrap();
    d.restart();
    common::wait_for(10, "the orphans to be reclaimed", || {
        d.sim_mapped() == (0, 0)
    });
    let st = d.virsh_ok(&["domstate", "q"]);
    assert!(st.contains("shut off"), "{st}");
    assert!(!status.with_extension("json.release").exists());
    d.virsh_ok(&["start", "guest"]);
}

#[test]
fn a_live_definition_this_version_cannot_read_is_quarantined_running() {
    let mut d = Daemon::start("");
    let f = d.file("q.xml", &pinned_xml("q2", "node-4"));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "q2"]);
    let status = status_file(&d, "q2");
    d.stop();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    v["xml"] = serde_json::Value::String("<domain type='kvm'><name>q2</name>".into());
    std::fs::write(&status, serde_json::to_vec(&v).unwrap()).unwrap();
    d.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.sim_power("node-4"), "On", "never powered off");
    assert_eq!(d.sim_mapped(), (1, 1));
    let info = d.virsh_ok(&["dominfo", "q2"]);
    assert!(info.contains("running"), "{info}");
    assert!(
        info.contains("its live definition cannot be read"),
        "{info}"
    );
    let e = d.virsh_err(&["destroy", "q2"]);
    assert!(e.contains("domain is quarantined"), "{e}");
    // Released with a readable status: the run is undone as a destroy would.
    d.stop();
    std::fs::rename(&status, status.with_extension("json.release")).unwrap();
    d.restart();
    common::wait_for(10, "the release to undo the run", || {
        d.sim_power("node-4") == "Off" && d.sim_mapped() == (0, 0)
    });
    let st = d.virsh_ok(&["domstate", "--reason", "q2"]);
    assert!(st.contains("shut off (destroyed)"), "{st}");
}

#[test]
fn a_run_on_a_node_no_longer_configured_is_quarantined() {
    let mut d = Daemon::start("");
    let f = d.file("g.xml", &pinned_xml("gone", "node-4"));
    d.virsh_ok(&["define", f.to_str().unwrap()]);
    d.virsh_ok(&["start", "gone"]);
    d.stop();
    // The operator shrank the inventory while the server ran.
    d.extra_config = "[sim]\nnodes = 3\n".into();
    d.restart();
    let info = d.virsh_ok(&["dominfo", "gone"]);
    assert!(info.contains("running"), "{info}");
    assert!(
        info.contains("its node 'node-4' is no longer configured"),
        "{info}"
    );
    let e = d.virsh_err(&["destroy", "gone"]);
    assert!(e.contains("domain is quarantined"), "{e}");
    assert!(status_file(&d, "gone").exists(), "its live state is kept");
}

#[test]
fn console_streams_on_the_wire_and_hostile_stream_packets() {
    const CREATE: i32 = 9;
    const OPEN_CONSOLE: i32 = 201;
    let d = Daemon::start("");
    let mut r = Raw::connect(&d.socket());
    r.open();
    assert_eq!(define(&mut r, &domain_xml("con", "")).0, 0);
    let dom = lookup(&mut r, "con");
    assert_eq!(r.call(CREATE, &dom).0, 0);
    // OPEN_CONSOLE(dom, dev_name NULL, flags 0): the reply, then stream packets with the
    // call's serial: STREAM (3), CONTINUE (2), raw bytes.
    let mut args = dom.clone();
    args.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    let serial = r.send_call(OPEN_CONSOLE, &args);
    let (h, _) = r.read().unwrap();
    assert_eq!(
        (h[2], h[3], h[4], h[5]),
        (201, 1, serial, 0),
        "the reply first"
    );
    let mut out = Vec::new();
    while !out.ends_with(b"login: ") {
        let (h, p) = r.read().unwrap();
        assert_eq!((h[2], h[3], h[4], h[5]), (201, 3, serial, 2));
        out.extend_from_slice(&p);
    }
    // Keystrokes: a stream packet from the client; the echo comes back.
    r.send_raw(0x2000_8086, 1, OPEN_CONSOLE, 3, serial, 2, b"x\r");
    let (_, p) = r.read().unwrap();
    assert_eq!(p, b"x\r\n");
    // Packets for a stream that does not exist are ignored; the connection lives.
    r.send_raw(0x2000_8086, 1, OPEN_CONSOLE, 3, serial + 100, 2, b"stray");
    // Finish: confirmed with an empty OK stream packet.
    r.send_raw(0x2000_8086, 1, OPEN_CONSOLE, 3, serial, 0, &[]);
    loop {
        let (h, p) = r.read().unwrap();
        if h[5] == 0 {
            assert_eq!((h[3], h[4], p.len()), (3, serial, 0));
            break;
        }
    }
    assert_eq!(r.call(GET_LIB_VERSION, &[]).0, 0, "still serving");

    // A stream packet bigger than libvirt's client ever sends closes that connection only.
    let serial = r.send_call(OPEN_CONSOLE, &args);
    let (h, _) = r.read().unwrap();
    assert_eq!((h[4], h[5]), (serial, 0));
    r.send_raw(
        0x2000_8086,
        1,
        OPEN_CONSOLE,
        3,
        serial,
        2,
        &vec![b'a'; 300_000],
    );
    while r.read().is_some() {}
    alive(&d);
    // The console it held is free again.
    let mut r2 = Raw::connect(&d.socket());
    r2.open();
    common::wait_for(5, "the console to be freed", || {
        let serial = r2.send_call(OPEN_CONSOLE, &args);
        loop {
            let (h, _) = r2.read().unwrap();
            if h[3] == 1 && h[4] == serial {
                return h[5] == 0;
            }
        }
    });
}
