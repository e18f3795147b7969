//! The SPDK test double (`tests/blackbox/spdk_double/`, which follows the recorded exchanges
//! of a real SPDK v26.05 target) run from a temp dir, one socket per role, killed with its
//! process group when dropped — for the backend's tests and `metalvirt-spdk-bench`, since no
//! SPDK target can be installed here. Needs python3 and the source tree.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::rpc::{RpcError, Spdk};

/// A running double.
pub struct Double {
    child: Child,
    dir: PathBuf,
}

impl Double {
    /// Starts the double with `roles` (e.g. `["storage", "dpu"]`) and `args` (e.g.
    /// `["--latency", "4-8"]`) and waits until it listens.
    pub fn start(roles: &[&str], args: &[&str]) -> Double {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "metalvirt-spdk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", tests)
            .args(["-m", "blackbox.spdk_double"])
            .args(args);
        for r in roles {
            cmd.arg("--sock")
                .arg(format!("{r}={}", dir.join(format!("{r}.sock")).display()));
        }
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("python3 runs the SPDK double (tests/blackbox/spdk_double)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SPDK double did not start");
        Double { child, dir }
    }

    /// The socket of a role.
    pub fn sock(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.sock"))
    }

    /// A client of a role.
    pub fn client(&self, role: &str) -> Spdk {
        Spdk::new(self.sock(role), Duration::from_secs(60))
    }

    /// One call on a role (fresh client).
    pub async fn call(&self, role: &str, method: &str, params: Value) -> Result<Value, RpcError> {
        let p = if params.is_null() { None } else { Some(params) };
        self.client(role).call(method, p).await
    }

    /// Makes a remote NVMe-oF volume on the storage role: a null bdev of `mib` MiB in
    /// subsystem `nqn` listening on 127.0.0.1:`port`.
    pub async fn nvmf_volume(&self, nqn: &str, bdev: &str, mib: u64, port: u16) {
        let s = self.client("storage");
        let _ = s
            .call("nvmf_create_transport", Some(json!({"trtype": "TCP"})))
            .await;
        s.call(
            "bdev_null_create",
            Some(json!({"name": bdev, "num_blocks": mib * 256, "block_size": 4096})),
        )
        .await
        .unwrap();
        s.call(
            "nvmf_create_subsystem",
            Some(json!({"nqn": nqn, "allow_any_host": true, "serial_number": "VOL", "model_number": "cloud-volume"})),
        )
        .await
        .unwrap();
        s.call(
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": nqn, "namespace": {"bdev_name": bdev, "nsid": 1}})),
        )
        .await
        .unwrap();
        s.call(
            "nvmf_subsystem_add_listener",
            Some(json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})),
        )
        .await
        .unwrap();
    }

    /// Makes an iSCSI target `iqn.2016-06.io.spdk:<name>` LUN 0 of `mib` MiB on the storage
    /// role at 127.0.0.1:3260 (portal group 1, initiator group 2 made on first use).
    pub async fn iscsi_volume(&self, name: &str, mib: u64) {
        let s = self.client("storage");
        let _ = s
            .call(
                "iscsi_create_portal_group",
                Some(json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]})),
            )
            .await;
        let _ = s
            .call(
                "iscsi_create_initiator_group",
                Some(json!({"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})),
            )
            .await;
        let bdev = format!("Isc{name}");
        s.call(
            "bdev_null_create",
            Some(json!({"name": bdev, "num_blocks": mib * 2048, "block_size": 512})),
        )
        .await
        .unwrap();
        s.call(
            "iscsi_create_target_node",
            Some(json!({"name": name, "alias_name": name, "luns": [{"bdev_name": bdev, "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64, "disable_chap": true})),
        )
        .await
        .unwrap();
    }

    /// The calls a role received, in order (`method`, `params`).
    pub async fn calls(&self, role: &str) -> Vec<(String, Value)> {
        let v = self
            .call("dpu", "double_calls", json!({"role": role}))
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["method"].as_str().unwrap().to_string(),
                    c["params"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
