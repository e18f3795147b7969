//! Wire-level black-box tests with a raw client: golden bytes, framing limits, bad input.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{decode_error, xdr_string, Daemon, Raw};

const REMOTE: u32 = 0x2000_8086;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares against `fixtures/wire/NAME.hex` (whitespace and `#` comments ignored);
/// `REGENERATE=1` rewrites the file.
fn golden(name: &str, bytes: &[u8]) {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/wire")
        .join(format!("{name}.hex"));
    if std::env::var_os("REGENERATE").is_some() {
        let mut s = String::new();
        for chunk in bytes.chunks(4) {
            s.push_str(&hex(chunk));
            s.push('\n');
        }
        std::fs::write(&p, s).unwrap();
    }
    let want: String = std::fs::read_to_string(&p)
        .unwrap_or_else(|_| panic!("missing golden file {}", p.display()))
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<String>()
        })
        .collect();
    assert_eq!(hex(bytes), want, "golden {name}");
}

fn packet(h: &[u32; 6], p: &[u8]) -> Vec<u8> {
    let mut v = ((28 + p.len()) as u32).to_be_bytes().to_vec();
    for w in h {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(p);
    v
}

const FIXED_UUID: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

fn fixed_domain_xml() -> String {
    format!("<domain type='kvm'><name>wire1</name><uuid>{FIXED_UUID}</uuid><memory unit='MiB'>1024</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>")
}

#[test]
fn golden_replies_error_and_event() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.socket());
    // AUTH_LIST before open, serial 1.
    let s = c.send_call(66, &[]);
    let (h, p) = c.read().unwrap();
    golden("auth-list-reply", &packet(&h, &p));
    assert_eq!(h[4], s);
    let mut open = vec![0, 0, 0, 1];
    open.extend_from_slice(&xdr_string("qemu:///system"));
    open.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(c.call(1, &open).0, 0);

    let (st, p) = c.call(157, &[]);
    assert_eq!(st, 0);
    golden("get-lib-version-ret", &p);
    let (_, p) = c.call(3, &[]);
    golden("get-type-ret", &p);
    // NODE_GET_INFO: char model[32] takes 128 bytes.
    let (_, p) = c.call(6, &[]);
    assert_eq!(p.len(), 128 + 8 + 6 * 4);
    golden("node-get-info-ret", &p);

    // Error reply: LOOKUP_BY_NAME of a missing domain, as a whole packet.
    let s = c.send_call(23, &xdr_string("nosuch"));
    let (h, p) = c.read().unwrap();
    assert_eq!((h[2], h[3], h[4], h[5]), (23, 1, s, 1));
    golden("error-no-domain-reply", &packet(&h, &p));
    assert_eq!(
        decode_error(&p),
        (
            42,
            10,
            "Domain not found: no domain with matching name 'nosuch'".into()
        )
    );

    // Register for lifecycle events, define, read the event message.
    let mut reg = 0i32.to_be_bytes().to_vec();
    reg.extend_from_slice(&[0, 0, 0, 0]);
    let (st, p) = c.call(316, &reg);
    assert_eq!(st, 0);
    assert_eq!(p, 1i32.to_be_bytes(), "first callbackID is 1");
    let s = c.send_call(11, &xdr_string(&fixed_domain_xml()));
    let mut got_event = None;
    let mut got_reply = None;
    while got_event.is_none() || got_reply.is_none() {
        let (h, p) = c.read().unwrap();
        match h[3] {
            1 if h[4] == s => got_reply = Some(p),
            2 => got_event = Some(packet(&h, &p)),
            _ => {}
        }
    }
    golden("event-lifecycle-defined", &got_event.unwrap());
    golden("define-xml-ret", &got_reply.unwrap());
}

#[test]
fn bad_frames_close_only_that_client() {
    let d = Daemon::start("");
    let mut good = Raw::connect(&d.socket());
    good.open();

    // A length word over 32 MiB + 4: closed without reply.
    let mut big = Raw::connect(&d.socket());
    big.s
        .write_all(&(32u32 * 1024 * 1024 + 5).to_be_bytes())
        .unwrap();
    assert!(
        big.read().is_none(),
        "over-cap frame must close the connection"
    );

    // A length word shorter than a header: closed.
    let mut short = Raw::connect(&d.socket());
    short.s.write_all(&8u32.to_be_bytes()).unwrap();
    short.s.write_all(&[0; 4]).unwrap();
    assert!(short.read().is_none());

    // A truncated frame followed by EOF: the daemon just drops it.
    let mut trunc = Raw::connect(&d.socket());
    trunc.s.write_all(&100u32.to_be_bytes()).unwrap();
    trunc.s.write_all(&[0x20, 0, 0x80]).unwrap();
    drop(trunc);

    // The other client is unaffected.
    assert_eq!(good.call(157, &[]).0, 0);
}

#[test]
fn protocol_errors_get_libvirt_replies() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.socket());

    // Calls before CONNECT_OPEN.
    let (st, p) = c.call(157, &[]);
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p),
        (
            1,
            7,
            "internal error: hypervisor connection not open".into()
        )
    );

    c.open();
    // Second open.
    let mut open = vec![0, 0, 0, 0];
    open.extend_from_slice(&[0, 0, 0, 0]);
    let (st, p) = c.call(1, &open);
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p).2,
        "internal error: connection already open"
    );

    // Unknown procedure.
    let (st, p) = c.call(9999, &[]);
    assert_eq!(st, 1);
    assert_eq!(decode_error(&p), (39, 7, "unknown procedure: 9999".into()));

    // Unknown program: the reply echoes the program.
    c.send_raw(0x1234_5678, 7, 1, 0, 77, 0, &[]);
    let (h, p) = c.read().unwrap();
    assert_eq!((h[0], h[1], h[4], h[5]), (0x1234_5678, 7, 77, 1));
    assert_eq!(
        decode_error(&p),
        (39, 7, "Cannot find program 305419896 version 7".into())
    );

    // Garbage XDR (a string length past the end).
    let (st, p) = c.call(23, &[0xff, 0xff, 0xff, 0x00, 1, 2]);
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p),
        (39, 7, "Unable to decode message payload".into())
    );

    // Call with a non-OK status.
    c.send_raw(REMOTE, 1, 157, 0, 88, 1, &[]);
    let (h, p) = c.read().unwrap();
    assert_eq!(h[4], 88);
    assert_eq!(decode_error(&p).2, "Unexpected message status 1");

    // An 8 MiB XML string: over the 4 MiB string limit, refused, connection kept.
    let xml = format!(
        "<domain type='kvm'><name>big</name><description>{}</description></domain>",
        "x".repeat(8 << 20)
    );
    let (st, p) = c.call(11, &xdr_string(&xml));
    assert_eq!(st, 1);
    assert_eq!(decode_error(&p).0, 39);

    // Exactly at the limit is decoded (and then refused as XML).
    let pad = (4 << 20) - 80;
    let xml = format!(
        "<domain type='kvm'><name>big</name><description>{}</description>",
        "y".repeat(pad)
    );
    let (st, p) = c.call(11, &xdr_string(&xml));
    assert_eq!(st, 1);
    assert_eq!(decode_error(&p).0, 27, "{}", decode_error(&p).2);

    // Replies and events sent by a client are ignored; the connection still works.
    c.send_raw(REMOTE, 1, 157, 1, 5, 0, &[]);
    c.send_raw(REMOTE, 1, 107, 2, 5, 0, &[]);
    assert_eq!(c.call(157, &[]).0, 0);
}

#[test]
fn keepalive_is_answered_during_slow_calls() {
    let d = Daemon::start("[sim]\npower_latency_ms = 1500\n");
    let mut c = Raw::connect(&d.socket());
    c.open();
    let (st, p) = c.call(11, &xdr_string(&fixed_domain_xml()));
    assert_eq!(st, 0);
    // DOMAIN_CREATE with the returned remote_nonnull_domain.
    let s = c.send_call(9, &p);
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(0x6b65_6570, 1, 1, 2, 0, 0, &[]);
    let started = std::time::Instant::now();
    let (h, _) = c.read().unwrap();
    assert_eq!((h[0], h[2], h[3]), (0x6b65_6570, 2, 2), "PONG first");
    assert!(started.elapsed() < Duration::from_millis(500));
    // Other calls on the same connection are not blocked by the slow one either.
    assert_eq!(c.call(157, &[]).0, 0);
    loop {
        let (h, _) = c.read().unwrap();
        if h[3] == 1 && h[4] == s {
            assert_eq!(h[5], 0);
            break;
        }
    }
}

#[test]
fn serial_zero_and_concurrent_calls_match_replies() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.socket());
    c.send_raw(REMOTE, 1, 66, 0, 0, 0, &[]);
    let (h, _) = c.read().unwrap();
    assert_eq!(h[4], 0);
    c.open();
    let serials: Vec<u32> = (0..50).map(|_| c.send_call(157, &[])).collect();
    let mut seen = Vec::new();
    while seen.len() < serials.len() {
        let (h, p) = c.read().unwrap();
        assert_eq!((h[2], h[5]), (157, 0));
        assert_eq!(p, 10_000_000u64.to_be_bytes());
        seen.push(h[4]);
    }
    seen.sort_unstable();
    assert_eq!(seen, serials);
}

#[test]
fn legacy_events_list_counts_and_impossible_procs() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.socket());
    c.open();
    // Legacy REGISTER_ANY (167) for lifecycle: messages are proc 107 without a callbackID.
    assert_eq!(c.call(167, &0i32.to_be_bytes()).0, 0);
    let (st, p) = c.call(167, &0i32.to_be_bytes());
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p),
        (
            8,
            0,
            "invalid argument: event callback already tracked".into()
        )
    );
    let (st, p) = c.call(167, &16i32.to_be_bytes());
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p),
        (1, 7, "internal error: unsupported event ID 16".into())
    );
    let s = c.send_call(11, &xdr_string(&fixed_domain_xml()));
    let mut event = None;
    let mut reply = false;
    while event.is_none() || !reply {
        let (h, p) = c.read().unwrap();
        if h[3] == 2 {
            assert_eq!(h[2], 107);
            event = Some(p);
        } else if h[3] == 1 && h[4] == s {
            reply = true;
        }
    }
    let ev = event.unwrap();
    // name "wire1" (4 + 8 bytes), uuid 16, id -1, event DEFINED 0, detail ADDED 0.
    assert_eq!(ev.len(), 12 + 16 + 12);
    assert_eq!(&ev[28..32], &(-1i32).to_be_bytes());
    assert_eq!(c.call(168, &0i32.to_be_bytes()).0, 0);
    let (st, p) = c.call(168, &0i32.to_be_bytes());
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p).2,
        "internal error: domain event 0 not registered"
    );
    let (st, p) = c.call(317, &999i32.to_be_bytes());
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p).2,
        "internal error: domain event callback 999 not registered"
    );

    // LIST_ALL_DOMAINS with need_results = 0: no array, just the count.
    let mut a = 0i32.to_be_bytes().to_vec();
    a.extend_from_slice(&0u32.to_be_bytes());
    let (st, p) = c.call(273, &a);
    assert_eq!(st, 0);
    assert_eq!(p, [0, 0, 0, 0, 0, 0, 0, 1], "empty array, ret 1");
    let mut a = 1i32.to_be_bytes().to_vec();
    a.extend_from_slice(&0u32.to_be_bytes());
    let (_, p) = c.call(273, &a);
    assert_eq!(&p[0..4], &[0, 0, 0, 1]);
    // Unknown filter flags are refused like libvirt's virCheckFlags.
    let mut a = 1i32.to_be_bytes().to_vec();
    a.extend_from_slice(&0x10000u32.to_be_bytes());
    let (st, p) = c.call(273, &a);
    assert_eq!(st, 1);
    assert_eq!(
        decode_error(&p).2,
        "unsupported flags (0x10000) in function virConnectListAllDomains"
    );

    // Migration and other impossible procedures: OPERATION_UNSUPPORTED, not "unknown".
    for proc_ in [61, 213, 302, 54, 53] {
        let (st, p) = c.call(proc_, &[]);
        assert_eq!(st, 1);
        let (code, _, msg) = decode_error(&p);
        assert_eq!(code, 84, "proc {proc_}: {msg}");
        assert!(
            msg.starts_with("Operation not supported: ") && msg.contains("bare-metal"),
            "{msg}"
        );
    }
}

#[test]
fn sigterm_lets_calls_in_flight_finish() {
    let mut d = Daemon::start("[sim]\npower_latency_ms = 1200\n");
    let mut c = Raw::connect(&d.socket());
    c.open();
    let (st, p) = c.call(11, &xdr_string(&fixed_domain_xml()));
    assert_eq!(st, 0);
    let s = c.send_call(9, &p);
    std::thread::sleep(Duration::from_millis(200));
    d.stop();
    let (h, _) = c
        .read()
        .expect("the start's reply arrives before the daemon exits");
    assert_eq!((h[2], h[4], h[5]), (9, s, 0));
    assert!(c.read().is_none(), "then the connection closes");
}

#[test]
fn silent_keepalive_clients_are_pinged_then_dropped() {
    let d = Daemon::start("keepalive_interval_ms = 200\nkeepalive_count = 2\n");
    let mut silent = Raw::connect(&d.socket());
    let mut polite = Raw::connect(&d.socket());
    let mut legacy = Raw::connect(&d.socket());
    for c in [&mut silent, &mut polite] {
        // CONNECT_SUPPORTS_FEATURE(PROGRAM_KEEPALIVE): the client will answer PINGs.
        let (st, p) = c.call(60, &10i32.to_be_bytes());
        assert_eq!((st, p), (0, vec![0, 0, 0, 1]));
        c.open();
    }
    legacy.open();
    let start = std::time::Instant::now();
    // The polite client answers every PING and stays connected.
    let until = start + Duration::from_millis(1200);
    polite
        .s
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut answered = 0;
    while std::time::Instant::now() < until {
        if let Some((h, _)) = polite.read() {
            assert_eq!((h[0], h[2]), (0x6b65_6570, 1));
            polite.send_raw(0x6b65_6570, 1, 2, 2, 0, 0, &[]);
            answered += 1;
        }
    }
    assert!(answered >= 2, "{answered}");
    polite
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(polite.call(157, &[]).0, 0);
    // Meanwhile the silent one got two PINGs and was disconnected.
    let mut pings = 0;
    while let Some((h, _)) = silent.read() {
        assert_eq!((h[0], h[2], h[3]), (0x6b65_6570, 1, 2), "only PINGs arrive");
        pings += 1;
    }
    assert_eq!(pings, 2);
    // A client that never asked about keepalive is never pinged.
    legacy
        .s
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    assert!(legacy.read().is_none());
    legacy
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(legacy.call(157, &[]).0, 0);
}

#[test]
fn garbage_arguments_to_every_procedure_get_replies() {
    let d = Daemon::start("");
    let mut c = Raw::connect(&d.socket());
    c.open();
    // A fixed-seed xorshift: the same payloads every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut replies = 0;
    for &proc_ in metalvirt::protocol::procs::ALL {
        if proc_ == 2 {
            continue; // CONNECT_CLOSE ends the session
        }
        let mut payloads: Vec<Vec<u8>> = vec![vec![], vec![0; 8], vec![0; 64], vec![0xff; 64]];
        for _ in 0..12 {
            let n = (next() % 96) as usize;
            payloads.push((0..n).map(|_| next() as u8).collect());
        }
        for p in payloads {
            let (st, reply) = c.call(proc_, &p);
            if st == 1 {
                let (code, _, msg) = decode_error(&reply);
                assert!(code > 0 && !msg.is_empty(), "proc {proc_}: empty error");
                assert!(
                    !msg.contains("failed while handling"),
                    "proc {proc_} panicked: {msg}"
                );
            }
            replies += 1;
        }
    }
    assert!(replies > 1000);
    // Still serving, nothing panicked.
    assert_eq!(c.call(157, &[]).0, 0);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
