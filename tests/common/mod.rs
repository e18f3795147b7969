//! Black-box harness: starts the real `metalvirtd` on temp dirs and stops it on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running daemon and its directories.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub extra_config: String,
}

/// Fast simulated hardware, so tests spend no time sleeping.
pub const FAST_SIM: &str = "[watcher]\ninterval_ms = 100\n[sim]\nnodes = 4\npower_latency_ms = 5\ngraceful_shutdown_ms = 50\ndisk_latency_ms = 2\nnic_latency_ms = 1\n";

impl Daemon {
    /// Starts a daemon with the fast simulated lab plus `extra` TOML appended.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("metalvirt-test")
            .tempdir()
            .unwrap();
        let mut d = Daemon {
            child: None,
            dir,
            extra_config: extra.to_string(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let cfg = self.dir.path().join("metalvirtd.toml");
        let text = merge_toml(FAST_SIM, &self.extra_config);
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_metalvirtd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--socket-dir")
            .arg(self.dir.path().join("run"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--config-dir")
            .arg(self.dir.path().join("etc"))
            .env("METALVIRT_LOG", "info,metalvirt=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start metalvirtd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains("ready") && UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("metalvirtd exited early ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("metalvirtd did not become ready:\n{}", self.log());
    }

    /// Stops with SIGTERM and starts again on the same directories.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILLs and starts again on the same directories.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix_kill(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/virtmetald-sock")
    }

    pub fn ro_socket(&self) -> PathBuf {
        self.dir.path().join("run/virtmetald-sock-ro")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    pub fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    pub fn ro_uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.ro_socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The simulated lab's hardware state, `{"nodes": {name: state}, "volumes": {..}}`, from
    /// its files (`state_dir/sim-lab/NODE.json`, written once a node changes, and
    /// `volumes.json`).
    pub fn sim_state(&self) -> serde_json::Value {
        let mut nodes = serde_json::Map::new();
        let mut volumes = serde_json::json!({});
        let dir = self.state_dir().join("sim-lab");
        for ent in std::fs::read_dir(&dir).into_iter().flatten() {
            let p = ent.unwrap().path();
            let Some(stem) = p
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_string)
            else {
                continue;
            };
            // The sim rewrites its files in place: a read that meets a rewrite reads again.
            let v: serde_json::Value = (0..5)
                .find_map(|_| {
                    let r = serde_json::from_slice(&std::fs::read(&p).unwrap()).ok();
                    if r.is_none() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    r
                })
                .unwrap_or_else(|| panic!("{} does not parse", p.display()));
            if stem == "volumes" {
                volumes = v;
            } else {
                nodes.insert(stem, v);
            }
        }
        serde_json::json!({"nodes": nodes, "volumes": volumes})
    }

    /// Total disks mapped and NICs plugged over all simulated nodes.
    pub fn sim_mapped(&self) -> (usize, usize) {
        let s = self.sim_state();
        let mut d = 0;
        let mut n = 0;
        if let Some(nodes) = s["nodes"].as_object() {
            for v in nodes.values() {
                d += v["disks"].as_object().map_or(0, |m| m.len());
                n += v["nics"].as_object().map_or(0, |m| m.len());
            }
        }
        (d, n)
    }

    /// Power of a simulated node ("On"/"Off"; a node that never changed has no file and is
    /// off).
    pub fn sim_power(&self, node: &str) -> String {
        self.sim_state()["nodes"][node]["power"]
            .as_str()
            .unwrap_or("Off")
            .to_string()
    }

    /// Runs `virsh -c URI args...`.
    pub fn virsh(&self, args: &[&str]) -> Output {
        virsh(&self.uri(), args)
    }

    /// Runs virsh and asserts success; returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let o = self.virsh(args);
        assert!(
            o.status.success(),
            "virsh {args:?} failed:\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs virsh and asserts failure; returns stderr.
    pub fn virsh_err(&self, args: &[&str]) -> String {
        let o = self.virsh(args);
        assert!(
            !o.status.success(),
            "virsh {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Writes a file in the test dir and returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Appends `extra` to `base`, letting `extra`'s keys win inside the same [section].
fn merge_toml(base: &str, extra: &str) -> String {
    let mut b: toml::Table = toml::from_str(base).unwrap();
    let e: toml::Table = toml::from_str(extra).expect("extra config is TOML");
    for (k, v) in e {
        match (b.get_mut(&k), v) {
            (Some(toml::Value::Table(bt)), toml::Value::Table(et)) => {
                for (k2, v2) in et {
                    bt.insert(k2, v2);
                }
            }
            (_, v) => {
                b.insert(k, v);
            }
        }
    }
    toml::to_string(&b).unwrap()
}

/// Runs virsh against any URI.
pub fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("virsh (package libvirt-clients) must be installed")
}

/// A small domain XML.
pub fn domain_xml(name: &str, extra_devices: &str) -> String {
    format!(
        "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='GiB'>2</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='volumes/{name}-root'><host name='10.0.0.1' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='br-int'/><virtualport type='openvswitch'/><model type='virtio'/></interface>
{extra_devices}  </devices>
</domain>
"
    )
}

/// Polls `f` until it returns true (or panics after `secs`).
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// Validates XML with the system's `virt-xml-validate FILE TYPE`.
pub fn virt_xml_validate(dir: &Path, xml: &str, kind: &str) {
    let p = dir.join(format!("validate-{}.xml", std::process::id()));
    std::fs::write(&p, xml).unwrap();
    let o = Command::new("virt-xml-validate")
        .arg(&p)
        .arg(kind)
        .output()
        .expect("virt-xml-validate");
    assert!(
        o.status.success(),
        "virt-xml-validate {kind} failed:\n{}{}\n{xml}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A raw protocol client for wire-level tests.
pub struct Raw {
    pub s: UnixStream,
    serial: u32,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, serial: 0 }
    }

    /// Sends a REMOTE call and returns its serial.
    pub fn send_call(&mut self, proc_: i32, payload: &[u8]) -> u32 {
        self.serial += 1;
        let s = self.serial;
        self.send_raw(0x2000_8086, 1, proc_, 0, s, 0, payload);
        s
    }

    #[allow(clippy::too_many_arguments)]
    pub fn send_raw(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: i32,
        ty: u32,
        serial: u32,
        status: u32,
        payload: &[u8],
    ) {
        let mut f = Vec::new();
        f.extend_from_slice(&((28 + payload.len()) as u32).to_be_bytes());
        for w in [prog, vers, proc_ as u32, ty, serial, status] {
            f.extend_from_slice(&w.to_be_bytes());
        }
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    /// Reads one packet: (header words, payload). None on EOF.
    pub fn read(&mut self) -> Option<([u32; 6], Vec<u8>)> {
        let mut l = [0u8; 4];
        if self.s.read_exact(&mut l).is_err() {
            return None;
        }
        let n = u32::from_be_bytes(l) as usize - 4;
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).ok()?;
        let mut h = [0u32; 6];
        for (i, w) in h.iter_mut().enumerate() {
            *w = u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        }
        Some((h, b[24..].to_vec()))
    }

    /// Calls and returns (status, payload).
    pub fn call(&mut self, proc_: i32, payload: &[u8]) -> (u32, Vec<u8>) {
        let s = self.send_call(proc_, payload);
        loop {
            let (h, p) = self.read().expect("reply");
            if h[3] == 1 && h[4] == s {
                return (h[5], p);
            }
        }
    }

    /// Opens the connection (AUTH_LIST + CONNECT_OPEN "qemu:///system").
    pub fn open(&mut self) {
        assert_eq!(self.call(66, &[]).0, 0);
        let mut p = vec![0, 0, 0, 1];
        p.extend_from_slice(&xdr_string("qemu:///system"));
        p.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(self.call(1, &p).0, 0);
    }
}

pub fn xdr_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.resize(v.len() + (4 - s.len() % 4) % 4, 0);
    v
}

/// Decodes a remote_error payload: (code, domain, message).
pub fn decode_error(p: &[u8]) -> (i32, i32, String) {
    let code = i32::from_be_bytes(p[0..4].try_into().unwrap());
    let dom = i32::from_be_bytes(p[4..8].try_into().unwrap());
    let present = u32::from_be_bytes(p[8..12].try_into().unwrap());
    let msg = if present != 0 {
        let n = u32::from_be_bytes(p[12..16].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&p[16..16 + n]).into_owned()
    } else {
        String::new()
    };
    (code, dom, msg)
}
