//! Entry points of the coverage-guided fuzz targets (`fuzz/fuzz_targets/`, run with
//! `scripts/fuzz.sh TARGET SECONDS`) and of their smoke run in the test suite
//! (`tests/fuzz_smoke.rs`). Each takes arbitrary bytes and must neither panic nor hang nor
//! grow without bound; where a property holds for every input (a formatted definition parses
//! back to the same text) it is asserted, so the fuzzer reports its violation as a crash.
//!
//! Nothing here runs in the daemon; the linker drops it from `metalvirtd`.

use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::domain::def::{DomainDef, FormatOpts, LiveInfo};
use crate::domain::hotplug::parse_device;
use crate::driver::Driver;
use crate::protocol::header::{check_length, Header, MessageType, HEADER_LEN, REMOTE_PROGRAM};
use crate::protocol::xdr::{Reader, Xdr};
use crate::rpc::client::{Client, Outbox, Peer};
use crate::secrets::SecretDef;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets, by the name `scripts/fuzz.sh` and `fuzz/` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("rpc_call", rpc_call),
    ("domain_xml", domain_xml),
    ("device_xml", device_xml),
    ("secret_xml", secret_xml),
    ("config_toml", config_toml),
    ("spdk_reply", crate::backend::spdk::fuzz_replies),
    ("ovsdb_reply", crate::backend::ovs::fuzz_replies),
    ("redfish_json", crate::backend::bmc::redfish::fuzz_bodies),
];

/// Formats, parses the text back and formats again: the two texts must be equal.
fn round_trip(def: &DomainDef, opts: &FormatOpts, live: bool) {
    let first = def.to_xml(opts);
    let again = if live {
        DomainDef::parse_live(&first)
    } else {
        DomainDef::parse(&first)
    };
    let again = again.unwrap_or_else(|e| panic!("formatted XML does not parse: {e}\n{first}"));
    let second = again.to_xml(opts);
    assert_eq!(first, second, "formatting is not stable");
}

/// Domain XML: parse, then format → parse → format gives the same text, for the
/// persistent form, the secure form and the live form of a run.
pub fn domain_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(def) = DomainDef::parse(text) else {
        return;
    };
    let mut secure = FormatOpts::inactive();
    secure.secure = true;
    round_trip(&def, &FormatOpts::inactive(), false);
    round_trip(&def, &secure, false);
    let mut live = def.clone();
    live.make_live();
    let opts = FormatOpts {
        live: Some(LiveInfo {
            id: 7,
            node: "node-1".into(),
        }),
        secure: true,
        inactive: false,
    };
    // The live form carries the id and node, which parse_live reads back as it does from a
    // status file; its raw form (what the status file holds) must round-trip too.
    let raw = FormatOpts {
        live: None,
        secure: true,
        inactive: false,
    };
    let _ = live.to_xml(&opts);
    round_trip(&live, &raw, true);
}

const BASE_DOMAIN: &str = "<domain type='kvm'><name>f</name>\
<uuid>8d2a3b5e-0a4c-4f6e-9d1e-2b3c4d5e6f70</uuid><memory unit='GiB'>1</memory><vcpu>1</vcpu>\
<os><type arch='x86_64'>hvm</type></os><devices>\
<disk type='network' device='disk'><source protocol='rbd' name='v/root'>\
<host name='10.0.0.1'/></source><target dev='vda' bus='virtio'/></disk>\
<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-int'/></interface>\
</devices></domain>";

/// Device XML: parse as attach does, insert into a domain (persistent and live), and the
/// result must format and parse back to the same text.
pub fn device_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Detach parses with the aliases kept, only to match; attach and update parse without
    // them and insert.
    let _ = parse_device(text, true);
    {
        let Ok(dev) = parse_device(text, false) else {
            return;
        };
        let base = DomainDef::parse(BASE_DOMAIN).expect("base domain parses");
        let mut config = base.clone();
        if config.insert_device(dev.clone(), false).is_ok() {
            round_trip(&config, &FormatOpts::inactive(), false);
        }
        let mut live = base;
        live.make_live();
        if live.insert_device(dev, true).is_ok() {
            let raw = FormatOpts {
                live: None,
                secure: true,
                inactive: false,
            };
            round_trip(&live, &raw, true);
        }
    }
}

/// Secret XML: parse, format, parse again: the same definition.
pub fn secret_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(def) = SecretDef::parse(text) else {
        return;
    };
    let first = def.to_xml();
    let again = SecretDef::parse(&first)
        .unwrap_or_else(|e| panic!("formatted secret does not parse: {e}\n{first}"));
    assert_eq!(first, again.to_xml(), "secret formatting is not stable");
}

/// The configuration file: parsing and every check, never a panic.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_toml(text);
}

struct Lab {
    rt: tokio::runtime::Runtime,
    driver: Arc<Driver>,
    _dir: tempfile_dir::Dir,
}

/// A private temporary directory removed at exit (no dependency on the tempfile crate,
/// which is only a dev-dependency).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let base = if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            let p = base.join(format!("metalvirt-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("fuzz state directory");
            Dir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let mut cfg = Config {
            state_dir: dir.path().join("state"),
            config_dir: dir.path().join("etc"),
            socket_dir: dir.path().join("run"),
            ..Default::default()
        };
        cfg.sim.nodes = 4;
        cfg.sim.power_latency_ms = 0;
        cfg.sim.graceful_shutdown_ms = 0;
        cfg.sim.disk_latency_ms = 0;
        cfg.sim.nic_latency_ms = 0;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let driver = rt.block_on(async {
            crate::persist::ensure_dir(&cfg.state_dir, 0o700).expect("state dir");
            let nodes = crate::backend::inventory::build(&cfg).expect("simulated lab");
            Driver::open(cfg, nodes).await.expect("driver")
        });
        Lab {
            rt,
            driver,
            _dir: dir,
        }
    })
}

/// The RPC layer as a connection sees it: the input is a stream of packets (length word,
/// header, payload) framed, checked and dispatched exactly as the server does, against a
/// driver over the simulated lab (every procedure's argument decoding, access checks and
/// handler). The connection starts opened, read-write; a CONNECT_OPEN in the input is
/// refused like a second open.
pub fn rpc_call(data: &[u8]) {
    let lab = lab();
    let (out, _rx) = Outbox::new(1 << 20);
    let client = Arc::new(Client::new(
        0,
        data.first().is_some_and(|b| b & 0x80 != 0),
        Peer::default(),
        Arc::new(out),
        lab.driver.clone(),
    ));
    client.with(|s| s.opened = true);
    let mut rest = data.get(1..).unwrap_or_default();
    let mut calls = 0;
    while rest.len() >= 4 && calls < 16 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let Ok(body_len) = check_length(len) else {
            return;
        };
        let Some(body) = rest.get(4..4 + body_len) else {
            return;
        };
        rest = &rest[4 + body_len..];
        let Ok(h) = Header::decode(&mut Reader::new(&body[..HEADER_LEN])) else {
            return;
        };
        if h.prog != REMOTE_PROGRAM || MessageType::from_u32(h.mtype) != Some(MessageType::Call) {
            continue;
        }
        calls += 1;
        let payload = &body[HEADER_LEN..];
        lab.rt.block_on(async {
            let call = crate::rpc::dispatch::call(&client, h.proc_, h.serial, payload);
            // Every call of the simulated lab answers at once; a hang is a finding.
            let _reply = tokio::time::timeout(std::time::Duration::from_secs(10), call)
                .await
                .expect("a call hung");
        });
    }
}

/// Runs target `name` on one input (the fuzz binaries' entry point).
pub fn run(name: &str, data: &[u8]) {
    let f = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1;
    f(data)
}

/// One remote call packet: length word, header (call, serial 1, status OK), payload.
pub fn call_packet(proc_: i32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        prog: REMOTE_PROGRAM,
        vers: 1,
        proc_,
        mtype: MessageType::Call as u32,
        serial: 1,
        status: 0,
    };
    crate::protocol::header::frame(&h, payload)
}

fn xdr_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
    v
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The seed corpus of a target, made from the repository's fixtures (`root` is the
/// repository), plus the regression inputs of its past findings
/// (`fixtures/fuzz/<target>/*.bin`).
pub fn seeds(root: &std::path::Path, target: &str) -> Vec<Vec<u8>> {
    let fx = root.join("fixtures");
    let mut out = match target {
        "domain_xml" => {
            let mut v = files(&fx.join("xml/in"), "xml");
            v.extend(files(&fx.join("xml/fail"), "xml"));
            v
        }
        "device_xml" => {
            let mut v = files(&fx.join("devices"), "xml");
            // Every device of the domain fixtures, one by one.
            for x in files(&fx.join("xml/in"), "xml") {
                let Ok(el) = std::str::from_utf8(&x)
                    .map_err(|_| ())
                    .and_then(|t| crate::domain::Element::parse(t).map_err(|_| ()))
                else {
                    continue;
                };
                if let Some(devs) = el.child("devices") {
                    v.extend(devs.elements().map(|d| d.to_xml().into_bytes()));
                }
            }
            v
        }
        "secret_xml" => files(&fx.join("devices"), "xml")
            .into_iter()
            .filter(|x| x.starts_with(b"<secret"))
            .collect(),
        "config_toml" => {
            let mut v: Vec<Vec<u8>> = std::fs::read(root.join("packaging/metalvirtd.toml"))
                .into_iter()
                .collect();
            v.extend(files(&fx.join("fuzz/config"), "toml"));
            v
        }
        "rpc_call" => {
            let mut v = Vec::new();
            let dom = |name: &str| {
                let mut d = xdr_string(name);
                d.extend_from_slice(&[0; 16]);
                d.extend_from_slice(&(-1i32).to_be_bytes());
                d
            };
            for x in files(&fx.join("xml/in"), "xml") {
                let Ok(text) = String::from_utf8(x) else {
                    continue;
                };
                let name = DomainDef::parse(&text)
                    .map(|d| d.name().to_string())
                    .unwrap_or_default();
                let mut s = vec![0u8];
                s.extend(call_packet(11, &xdr_string(&text)));
                s.extend(call_packet(23, &xdr_string(&name)));
                let mut args = dom(&name);
                args.extend_from_slice(&0u32.to_be_bytes());
                s.extend(call_packet(14, &args));
                s.extend(call_packet(9, &dom(&name)));
                s.extend(call_packet(12, &dom(&name)));
                v.push(s);
            }
            for d in files(&fx.join("devices"), "xml") {
                let Ok(text) = String::from_utf8(d) else {
                    continue;
                };
                let mut args = dom("f");
                args.extend(xdr_string(&text));
                args.extend_from_slice(&3u32.to_be_bytes());
                let mut s = vec![0u8];
                s.extend(call_packet(160, &args));
                v.push(s);
            }
            for (p, args) in [
                (157, Vec::new()),
                (4, Vec::new()),
                (6, Vec::new()),
                (7, Vec::new()),
                (273, vec![0, 0, 0, 1, 0, 0, 0, 0]),
                (211, vec![0, 0, 0, 10]),
            ] {
                let mut s = vec![0x80u8];
                s.extend(call_packet(p, &args));
                v.push(s);
            }
            v
        }
        "spdk_reply" => {
            let mut v = Vec::new();
            let mut names: Vec<_> = std::fs::read_dir(fx.join("spdk"))
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            names.sort();
            for p in names {
                let Ok(text) = std::fs::read_to_string(&p) else {
                    continue;
                };
                let replies: Vec<&str> =
                    text.lines().filter_map(|l| l.strip_prefix("<< ")).collect();
                for chunk in replies.chunks(24) {
                    v.push(chunk.join("\n").into_bytes());
                }
            }
            v
        }
        "ovsdb_reply" => files(&fx.join("fuzz/ovsdb"), "json"),
        "redfish_json" => files(&fx.join("fuzz/redfish"), "json"),
        _ => Vec::new(),
    };
    out.extend(files(&fx.join("fuzz/regressions").join(target), "bin"));
    out
}

/// Deterministic variations of a seed for the smoke run (no fuzzer needed): truncations,
/// byte flips, duplicated and dropped slices. `n` variations from `seed`.
pub fn variations(seed: &[u8], n: usize, salt: u64) -> Vec<Vec<u8>> {
    let mut x = salt ^ 0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64;
    let mut next = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut v = seed.to_vec();
        if v.is_empty() {
            v.push(next() as u8);
        }
        match next() % 5 {
            0 => v.truncate((next() as usize) % v.len()),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] ^= 1 << (next() % 8);
                }
            }
            2 => {
                let i = (next() as usize) % v.len();
                let j = i + (next() as usize) % (v.len() - i).clamp(1, 64);
                let piece = v[i..j.min(v.len())].to_vec();
                let at = (next() as usize) % v.len();
                v.splice(at..at, piece);
            }
            3 => {
                let i = (next() as usize) % v.len();
                let j = (i + 1 + (next() as usize) % 32).min(v.len());
                v.drain(i..j);
            }
            _ => {
                let i = (next() as usize) % v.len();
                v[i] = [b'<', b'>', b'"', b'\'', b'&', b'{', b'}', b'[', 0, 0xff]
                    [next() as usize % 10];
            }
        }
        out.push(v);
    }
    out
}
