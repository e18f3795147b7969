//! A real ovsdb-server on a private database (Open vSwitch's schema) for the unit tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub(crate) struct Server {
    pub dir: tempfile::TempDir,
    pid: Option<u32>,
    /// `pssl:` port, when serving over SSL too.
    ssl_port: Option<u16>,
}

/// Runs openssl; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`), and certificates it signs: `<name>-server.pem` for 127.0.0.1 and
/// `<name>-client.pem`, each with its `.key`.
pub(crate) fn make_pki(dir: &std::path::Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = format!("{name}-ca");
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (cak, cap, subj) = (
        format!("{ca}.key"),
        format!("{ca}.pem"),
        format!("/CN={ca}"),
    );
    a.extend(["-keyout", &cak, "-out", &cap, "-days", "2", "-subj", &subj]);
    openssl(dir, &a);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for who in ["server", "client"] {
        let base = format!("{name}-{who}");
        let (key, csr, pem, subj) = (
            format!("{base}.key"),
            format!("{base}.csr"),
            format!("{base}.pem"),
            format!("/CN={base}"),
        );
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &a);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &cap,
                "-CAkey",
                &cak,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
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
        let mut s = Server {
            dir,
            pid: None,
            ssl_port: None,
        };
        s.serve();
        s
    }

    /// Like [`Server::start`], also serving `pssl:` on 127.0.0.1 with certificates of a
    /// private CA "ovs" (client certificates required, as ovsdb-server always does).
    pub fn start_ssl() -> Server {
        let dir = tempfile::tempdir().unwrap();
        make_pki(dir.path(), "ovs");
        let ok = Command::new("ovsdb-tool")
            .arg("create")
            .arg(dir.path().join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .status()
            .unwrap();
        assert!(ok.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Server {
            dir,
            pid: None,
            ssl_port: Some(port),
        };
        s.serve();
        s
    }

    /// The `ssl:` address.
    pub fn ssl_addr(&self) -> String {
        format!("ssl:127.0.0.1:{}", self.ssl_port.expect("served over SSL"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)starts ovsdb-server on the database.
    pub fn serve(&mut self) {
        let pidfile = self.path("ovsdb-server.pid");
        let mut cmd = Command::new("ovsdb-server");
        if let Some(port) = self.ssl_port {
            cmd.arg(format!("--remote=pssl:{port}:127.0.0.1"))
                .arg(format!(
                    "--private-key={}",
                    self.path("ovs-server.key").display()
                ))
                .arg(format!(
                    "--certificate={}",
                    self.path("ovs-server.pem").display()
                ))
                .arg(format!("--ca-cert={}", self.path("ovs-ca.pem").display()));
        }
        let ok = cmd
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
