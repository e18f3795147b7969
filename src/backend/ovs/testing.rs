//! A real ovsdb-server on a private database (Open vSwitch's schema) for the unit tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub(crate) struct Server {
    pub dir: tempfile::TempDir,
    pid: Option<u32>,
}

impl Server {
    /// A fresh database, served on `<dir>/db.sock`.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("ovsdb-tool")
            .arg("create")
            .arg(dir.path().join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .status()
            .expect("ovsdb-tool from openvswitch-switch (scripts/install-deps.sh)");
        assert!(ok.success());
        let mut s = Server { dir, pid: None };
        s.serve();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)starts ovsdb-server on the database.
    pub fn serve(&mut self) {
        let pidfile = self.path("ovsdb-server.pid");
        let ok = Command::new("ovsdb-server")
            .arg(self.path("conf.db"))
            .arg(format!("--remote=punix:{}", self.path("db.sock").display()))
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--unixctl={}", self.path("ctl").display()))
            .arg(format!("--log-file={}", self.path("log").display()))
            .args(["--detach", "--no-chdir", "-vconsole:off"])
            .status()
            .unwrap();
        assert!(ok.success());
        self.pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
    }

    pub fn addr(&self) -> String {
        format!("unix:{}", self.path("db.sock").display())
    }

    /// ovs-vsctl against this server, without waiting for an ovs-vswitchd (there is none).
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db={}", self.addr()))
            .args(["--no-wait", "--timeout=10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The root row and a netdev bridge, as `ovs-vsctl init; add-br` make them.
    pub fn with_bridge(self, name: &str) -> Server {
        self.vsctl(&[
            "init",
            "--",
            "add-br",
            name,
            "--",
            "set",
            "Bridge",
            name,
            "datapath_type=netdev",
        ]);
        self
    }

    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..200 {
                if nix::sys::signal::kill(pid, None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
