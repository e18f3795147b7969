//! Disks on the DPU through SPDK: each `<disk>` becomes an SPDK bdev connected to its cloud
//! volume (NVMe-oF, iSCSI, Ceph RBD, or a local file/device for labs) and is presented to the
//! bare-metal host by the node's [`Frontend`] (an NVMe-oF subsystem per domain, vfio-user, or
//! vhost-blk).
//!
//! SPDK objects are named after the driver's handles, so the state can be read back from
//! SPDK alone after a restart: a disk `mv-<domain>-<target>` is the bdev of that name
//! (iSCSI, RBD, AIO) or the NVMe controller of that name (its bdev `<handle>n1`), and the
//! domain's subsystem is `<nqn prefix>:mv-<domain>`. What the backend keeps in memory is
//! only what it must put back when SPDK drops it: the presentations of mapped disks
//! ([`SpdkDisks::heal`]).

#[cfg(any(test, feature = "spdk-double"))]
pub mod double;
pub mod frontend;
pub mod rpc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    BResult, BackendError, BlockInfo, BlockStats, DiskSpec, Disks, ErrorKind, Qos, Volume,
};
pub use frontend::{Frontend, Listen, Nvmf, Presented, VhostBlk};
use rpc::{code, RpcError, Spdk};

/// How a node's SPDK is driven.
#[derive(Debug, Clone)]
pub struct SpdkSettings {
    /// Node name, for messages.
    pub node: String,
    /// iSCSI initiator IQN of the DPU.
    pub initiator_iqn: String,
    /// Block size of RBD bdevs.
    pub rbd_block_size: u32,
    /// Limit of the calls that connect volumes or change namespaces.
    pub attach_timeout: Duration,
    /// How long a resize waits for SPDK to see a volume grown on its target.
    pub resize_wait: Duration,
    /// How often presentations SPDK dropped are looked for.
    pub heal_interval: Duration,
}

/// What the backend remembers of a mapped disk.
#[derive(Debug, Clone)]
struct Mapping {
    presented: Presented,
    source: Source,
    /// To connect the volume again when SPDK lost it (a restarted target).
    spec: DiskSpec,
}

/// The kind of bdev behind a disk (read back from SPDK after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Nvme,
    Iscsi,
    Rbd,
    Aio,
}

impl Source {
    fn of(v: &Volume) -> Option<Source> {
        match v {
            Volume::Nvmf { .. } => Some(Source::Nvme),
            Volume::Iscsi { .. } => Some(Source::Iscsi),
            Volume::Rbd { .. } => Some(Source::Rbd),
            Volume::Local { .. } => Some(Source::Aio),
            Volume::Other => None,
        }
    }

    /// From a `bdev_get_bdevs` entry: its `driver_specific` key.
    fn of_bdev(b: &Value) -> Option<Source> {
        let ds = b.get("driver_specific")?;
        [
            ("nvme", Source::Nvme),
            ("iscsi", Source::Iscsi),
            ("rbd", Source::Rbd),
            ("aio", Source::Aio),
        ]
        .into_iter()
        .find(|(k, _)| ds.get(*k).is_some())
        .map(|(_, s)| s)
    }

    fn delete_method(self) -> &'static str {
        match self {
            Source::Nvme => "bdev_nvme_detach_controller",
            Source::Iscsi => "bdev_iscsi_delete",
            Source::Rbd => "bdev_rbd_delete",
            Source::Aio => "bdev_aio_delete",
        }
    }
}

/// Disks mapped by one node's SPDK.
pub struct SpdkDisks {
    settings: SpdkSettings,
    spdk: Arc<Spdk>,
    frontend: Box<dyn Frontend>,
    mapped: Mutex<HashMap<String, Mapping>>,
    clusters: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
    /// Next SPDK notification id to read.
    notify_next: Mutex<Option<u64>>,
    heal_rounds: std::sync::atomic::AtomicU64,
    /// The connection generation the last full heal saw.
    healed_generation: std::sync::atomic::AtomicU64,
    /// Heal runs alone: a disk being unmapped is never presented again behind its back.
    gate: tokio::sync::RwLock<()>,
}

/// The domain part (`mv-<uuid>`) of a handle `mv-<uuid>-<target>`.
fn domain_of(handle: &str) -> String {
    match handle.get(..35) {
        Some(d) if handle.starts_with("mv-") => d.to_string(),
        _ => handle.to_string(),
    }
}

fn spdk_err(e: RpcError) -> BackendError {
    let kind = match &e {
        RpcError::Connect { .. } | RpcError::Disconnected { .. } => ErrorKind::Unreachable,
        RpcError::Timeout { .. } => ErrorKind::Timeout,
        _ => ErrorKind::Failed,
    };
    BackendError::with_kind(kind, e.to_string())
}

fn as_array(method: &str, v: Value) -> Result<Vec<Value>, RpcError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(RpcError::Protocol {
            method: method.into(),
            detail: format!("expected an array, got {other}"),
        }),
    }
}

/// The namespace identity of a disk: its serial when that is a UUID (nova puts the volume id
/// there, so the host finds `/dev/disk/by-id/nvme-uuid.<volume id>`), else a UUID derived
/// from the serial, else from the handle.
pub fn disk_ident(spec: &DiskSpec) -> Uuid {
    match spec.serial.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => {
            Uuid::parse_str(s).unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, s.as_bytes()))
        }
        _ => Uuid::new_v5(&Uuid::NAMESPACE_OID, spec.handle.as_bytes()),
    }
}

/// `iscsi://[user%secret@]host:port/iqn/lun`, libiscsi's URL form that `bdev_iscsi_create`
/// takes (CHAP credentials go in it).
fn iscsi_url(spec: &DiskSpec, iqn: &str, lun: u32, host: &str, port: u16) -> BResult<String> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let cred = match &spec.auth {
        None => String::new(),
        Some(a) => {
            let user = a.username.as_deref().unwrap_or("");
            let key = a
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k.expose()).into_owned())
                .unwrap_or_default();
            if user.is_empty() || key.is_empty() {
                return Err(BackendError::new(format!(
                    "iSCSI CHAP of disk {} needs <auth username> and a secret value",
                    spec.target
                )));
            }
            if [user, key.as_str()]
                .iter()
                .any(|s| s.contains(['%', '@', '/']))
            {
                return Err(BackendError::with_kind(
                    ErrorKind::Unsupported,
                    format!(
                        "iSCSI CHAP user and secret of disk {} cannot contain '%', '@' or '/' (libiscsi URL syntax)",
                        spec.target
                    ),
                ));
            }
            format!("{user}%{key}@")
        }
    };
    Ok(format!("iscsi://{cred}{host}:{port}/{iqn}/{lun}"))
}

impl SpdkDisks {
    /// The backend of one node.
    pub fn new(settings: SpdkSettings, spdk: Arc<Spdk>, frontend: Box<dyn Frontend>) -> Self {
        SpdkDisks {
            settings,
            spdk,
            frontend,
            mapped: Mutex::new(HashMap::new()),
            clusters: Mutex::new(HashMap::new()),
            notify_next: Mutex::new(None),
            heal_rounds: std::sync::atomic::AtomicU64::new(0),
            healed_generation: std::sync::atomic::AtomicU64::new(0),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    fn remember(&self, handle: &str, m: Option<Mapping>) {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        match m {
            Some(m) => mapped.insert(handle.to_string(), m),
            None => mapped.remove(handle),
        };
    }

    fn mapping(&self, handle: &str) -> Option<Mapping> {
        self.mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(handle)
            .cloned()
    }

    /// One bdev by name; `None` when SPDK has none.
    async fn bdev(&self, name: &str) -> Result<Option<Value>, RpcError> {
        match self
            .spdk
            .call("bdev_get_bdevs", Some(json!({"name": name})))
            .await
        {
            Ok(v) => Ok(as_array("bdev_get_bdevs", v)?.into_iter().next()),
            Err(e) if e.is_no_device() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bdev of a disk, read back from SPDK: `<handle>` or `<handle>n1`.
    async fn find_bdev(&self, handle: &str) -> Result<Option<Value>, RpcError> {
        if let Some(m) = self.mapping(handle) {
            return self.bdev(&m.presented.bdev).await;
        }
        if let Some(b) = self.bdev(handle).await? {
            return Ok(Some(b));
        }
        self.bdev(&format!("{handle}n1")).await
    }

    async fn ensure_cluster(&self, spec: &DiskSpec, monitors: &[String]) -> BResult<String> {
        let user = spec.auth.as_ref().and_then(|a| a.username.clone());
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{}|{}", monitors.join(","), user.as_deref().unwrap_or("")).as_bytes(),
        );
        let name = format!("mv-ceph-{}", &id.simple().to_string()[..12]);
        let cell = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        let mut config = json!({"mon_host": monitors.join(",")});
        if let Some(k) = spec.auth.as_ref().and_then(|a| a.key.as_ref()) {
            // A ceph secret holds the decoded cephx key; Ceph's config wants it in base64,
            // as libvirt hands it to QEMU.
            use base64::Engine;
            config["key"] = json!(base64::engine::general_purpose::STANDARD.encode(k.expose()));
        }
        let mut params = json!({"name": name, "config_param": config});
        if let Some(u) = &user {
            params["user_id"] = json!(u);
        }
        cell.get_or_try_init(|| async {
            match self
                .spdk
                .call_within(
                    "bdev_rbd_register_cluster",
                    Some(params),
                    self.settings.attach_timeout,
                )
                .await
            {
                Err(e) if e.is(code::EEXIST, None) || e.to_string().contains("exists") => Ok(()),
                r => r.map(drop),
            }
        })
        .await
        .map_err(spdk_err)?;
        Ok(name)
    }

    /// Connects the volume as a bdev named after the handle; returns the bdev's name.
    async fn connect(&self, spec: &DiskSpec) -> BResult<String> {
        let h = spec.handle.as_str();
        let t = self.settings.attach_timeout;
        match &spec.volume {
            Volume::Nvmf {
                transport,
                subnqn,
                host,
                port,
            } => {
                let addr = resolve(host, *port).await?;
                let params = json!({
                    "name": h,
                    "trtype": transport,
                    "adrfam": if addr.contains(':') { "ipv6" } else { "ipv4" },
                    "traddr": addr,
                    "trsvcid": port.to_string(),
                    "subnqn": subnqn,
                });
                match self
                    .spdk
                    .call_within("bdev_nvme_attach_controller", Some(params), t)
                    .await
                {
                    Ok(v) => {
                        let names = as_array("bdev_nvme_attach_controller", v).map_err(spdk_err)?;
                        match names.first().and_then(Value::as_str) {
                            Some(b) => Ok(b.to_string()),
                            None => {
                                let _ = self.delete_source(h, Some(Source::Nvme)).await;
                                Err(BackendError::new(format!(
                                    "NVMe-oF subsystem {subnqn} at {host}:{port} has no namespace"
                                )))
                            }
                        }
                    }
                    // Attached already with this path (a start interrupted by a crash).
                    Err(e) if e.code() == Some(code::EALREADY) => Ok(format!("{h}n1")),
                    Err(e) => Err(spdk_err(e)),
                }
            }
            Volume::Iscsi {
                iqn,
                lun,
                host,
                port,
            } => {
                // A second bdev_iscsi_create with a name in use logs in first, fails, and leaks
                // the iSCSI session in SPDK: look before creating.
                if self.bdev(h).await.map_err(spdk_err)?.is_some() {
                    return Ok(h.to_string());
                }
                let url = iscsi_url(spec, iqn, *lun, host, *port)?;
                self.spdk
                    .call_within(
                        "bdev_iscsi_create",
                        Some(json!({
                            "name": h,
                            "initiator_iqn": self.settings.initiator_iqn,
                            "url": url,
                        })),
                        t,
                    )
                    .await
                    .map_err(spdk_err)?;
                Ok(h.to_string())
            }
            Volume::Rbd {
                pool,
                image,
                monitors,
            } => {
                if self.bdev(h).await.map_err(spdk_err)?.is_some() {
                    return Ok(h.to_string());
                }
                let cluster = self.ensure_cluster(spec, monitors).await?;
                self.spdk
                    .call_within(
                        "bdev_rbd_create",
                        Some(json!({
                            "name": h,
                            "pool_name": pool,
                            "rbd_name": image,
                            "block_size": self.settings.rbd_block_size,
                            "cluster_name": cluster,
                        })),
                        t,
                    )
                    .await
                    .map_err(spdk_err)?;
                Ok(h.to_string())
            }
            Volume::Local { path, block_size } => {
                if self.bdev(h).await.map_err(spdk_err)?.is_some() {
                    return Ok(h.to_string());
                }
                // SPDK detects a block device's block size; a regular file has none.
                let mut params = json!({"name": h, "filename": path});
                if let Some(b) = block_size {
                    params["block_size"] = json!(b);
                }
                self.spdk
                    .call_within("bdev_aio_create", Some(params), t)
                    .await
                    .map_err(spdk_err)?;
                Ok(h.to_string())
            }
            Volume::Other => Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!("disk {} has no source SPDK can connect", spec.target),
            )),
        }
    }

    /// Deletes the bdev (or NVMe controller) of a disk, of kind `known` or as SPDK reports
    /// it; nothing there is success.
    async fn delete_source(&self, handle: &str, known: Option<Source>) -> Result<(), RpcError> {
        let source = match known {
            Some(s) => Some(s),
            None => match self.bdev(handle).await? {
                None => None,
                Some(b) => match Source::of_bdev(&b) {
                    Some(s) => Some(s),
                    None => {
                        return Err(RpcError::Protocol {
                            method: "bdev_get_bdevs".into(),
                            detail: format!(
                                "bdev {handle} is a {} metalvirt does not make; left alone",
                                b["product_name"].as_str().unwrap_or("bdev")
                            ),
                        })
                    }
                },
            },
        };
        // No bdev of that name: an NVMe controller (its bdevs are `<handle>n<nsid>`), or
        // one whose namespace is gone; or nothing at all.
        let method = source.unwrap_or(Source::Nvme).delete_method();
        match self
            .spdk
            .call_within(
                method,
                Some(json!({"name": handle})),
                self.settings.attach_timeout,
            )
            .await
        {
            Err(e) if e.is_no_device() => Ok(()),
            r => r.map(drop),
        }
    }

    /// Sets a bdev's QoS limits (`bdev_set_qos_limit`: every limit named, 0 = none).
    async fn set_limits(&self, bdev: &str, q: &Qos) -> BResult<()> {
        self.spdk
            .call(
                "bdev_set_qos_limit",
                Some(json!({
                    "name": bdev,
                    "rw_ios_per_sec": q.rw_ios_per_sec,
                    "rw_mbytes_per_sec": q.rw_mbytes_per_sec,
                    "r_mbytes_per_sec": q.r_mbytes_per_sec,
                    "w_mbytes_per_sec": q.w_mbytes_per_sec,
                })),
            )
            .await
            .map(drop)
            .map_err(spdk_err)
    }

    /// Maps and presents; on failure removes what it made.
    async fn attach_inner(&self, spec: &DiskSpec) -> BResult<String> {
        let source = Source::of(&spec.volume).ok_or_else(|| {
            BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "disk {} ({}) has no source SPDK can connect",
                    spec.target, spec.source
                ),
            )
        })?;
        let domain = domain_of(&spec.handle);
        // The volume connects (an NVMe-oF attach takes ~70 ms) while the frontend makes what
        // does not depend on it.
        let (bdev, prepared) = tokio::join!(
            self.connect(spec),
            self.frontend.prepare(&self.spdk, &domain)
        );
        let bdev = match (bdev, prepared) {
            (Ok(b), Ok(())) => b,
            (Err(e), _) => {
                let _ = self
                    .frontend
                    .withdraw(&self.spdk, &domain, &spec.handle)
                    .await;
                return Err(e);
            }
            (Ok(_), Err(e)) => {
                let _ = self
                    .frontend
                    .withdraw(&self.spdk, &domain, &spec.handle)
                    .await;
                let _ = self.delete_source(&spec.handle, Some(source)).await;
                return Err(spdk_err(e));
            }
        };
        if let Some(q) = spec.qos {
            if let Err(e) = self.set_limits(&bdev, &q).await {
                let _ = self
                    .frontend
                    .withdraw(&self.spdk, &domain, &spec.handle)
                    .await;
                let _ = self.delete_source(&spec.handle, Some(source)).await;
                return Err(e);
            }
        }
        let mut presented = Presented {
            handle: spec.handle.clone(),
            domain,
            bdev,
            unit: spec.unit,
            ident: disk_ident(spec),
            readonly: spec.readonly,
        };
        match self.frontend.present(&self.spdk, &presented).await {
            Ok(place) => {
                presented.unit = place.unit;
                let mut spec = spec.clone();
                spec.unit = place.unit;
                self.remember(
                    &spec.handle.clone(),
                    Some(Mapping {
                        presented,
                        source,
                        spec,
                    }),
                );
                Ok(place.device)
            }
            Err(e) => {
                let _ = self
                    .frontend
                    .withdraw(&self.spdk, &presented.domain, &spec.handle)
                    .await;
                let _ = self.delete_source(&spec.handle, Some(source)).await;
                Err(spdk_err(e))
            }
        }
    }

    /// Reads SPDK notifications since the last call; whether any concerns a bdev of ours.
    async fn notified(&self) -> Result<bool, RpcError> {
        let next = *self.notify_next.lock().unwrap_or_else(|e| e.into_inner());
        let mut id = next.unwrap_or(0);
        let mut ours = next.is_none();
        loop {
            let v = self
                .spdk
                .call(
                    "notify_get_notifications",
                    Some(json!({"id": id, "max": 1000})),
                )
                .await?;
            let list = as_array("notify_get_notifications", v)?;
            for n in &list {
                id = id.max(n["id"].as_u64().unwrap_or(0) + 1);
                let ctx = n["ctx"].as_str().unwrap_or("");
                ours |= ctx.starts_with("mv-");
            }
            if list.len() < 1000 {
                break;
            }
        }
        *self.notify_next.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        Ok(ours)
    }
}

/// A target address SPDK can use (it takes numeric addresses only).
async fn resolve(host: &str, port: u16) -> BResult<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host.to_string());
    }
    let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| {
        BackendError::with_kind(
            ErrorKind::Unreachable,
            format!("cannot resolve storage target {host}: {e}"),
        )
    })?;
    addrs
        .next()
        .map(|a| a.ip().to_string())
        .ok_or_else(|| BackendError::new(format!("storage target {host} has no address")))
}

#[async_trait]
impl Disks for SpdkDisks {
    async fn attach(&self, spec: &DiskSpec) -> BResult<String> {
        let _gate = self.gate.read().await;
        self.attach_inner(spec).await
    }

    async fn detach(&self, handle: &str) -> BResult<()> {
        let _gate = self.gate.read().await;
        // Forgotten first: a heal must not present it again while it goes.
        let m = self.mapping(handle);
        self.remember(handle, None);
        let domain = domain_of(handle);
        let undone = async {
            self.frontend.withdraw(&self.spdk, &domain, handle).await?;
            self.delete_source(handle, m.as_ref().map(|m| m.source))
                .await
        };
        if let Err(e) = undone.await {
            // Still (partly) there: keep presenting it until an unmap succeeds.
            if let Some(m) = m {
                self.remember(handle, Some(m));
            }
            return Err(spdk_err(e));
        }
        Ok(())
    }

    async fn set_qos(&self, handle: &str, qos: &Qos) -> BResult<()> {
        let _gate = self.gate.read().await;
        let mut m = self
            .mapping(handle)
            .ok_or_else(|| BackendError::new(format!("disk {handle} is not mapped")))?;
        self.set_limits(&m.presented.bdev, qos).await?;
        m.spec.qos = (!qos.is_unlimited()).then_some(*qos);
        self.remember(handle, Some(m));
        Ok(())
    }

    async fn list(&self) -> BResult<Vec<String>> {
        let (bdevs, ctrls) = tokio::join!(
            self.spdk.call("bdev_get_bdevs", None),
            self.spdk.call("bdev_nvme_get_controllers", None)
        );
        let mut out: Vec<String> = Vec::new();
        for b in as_array("bdev_get_bdevs", bdevs.map_err(spdk_err)?).map_err(spdk_err)? {
            let name = b["name"].as_str().unwrap_or("");
            if name.starts_with("mv-") && Source::of_bdev(&b) != Some(Source::Nvme) {
                out.push(name.to_string());
            }
        }
        for c in
            as_array("bdev_nvme_get_controllers", ctrls.map_err(spdk_err)?).map_err(spdk_err)?
        {
            if let Some(n) = c["name"].as_str().filter(|n| n.starts_with("mv-")) {
                out.push(n.to_string());
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn resize(&self, handle: &str, bytes: u64) -> BResult<u64> {
        let b = self
            .find_bdev(handle)
            .await
            .map_err(spdk_err)?
            .ok_or_else(|| BackendError::new(format!("{handle} is not mapped")))?;
        let name = b["name"].as_str().unwrap_or(handle).to_string();
        let size = |b: &Value| {
            b["num_blocks"].as_u64().unwrap_or(0) * b["block_size"].as_u64().unwrap_or(0)
        };
        if size(&b) >= bytes {
            return Ok(size(&b));
        }
        let source = Source::of_bdev(&b);
        if source == Some(Source::Rbd) {
            let mib = bytes.div_ceil(1 << 20);
            self.spdk
                .call_within(
                    "bdev_rbd_resize",
                    Some(json!({"name": name, "new_size": mib})),
                    self.settings.attach_timeout,
                )
                .await
                .map_err(spdk_err)?;
        }
        // NVMe-oF and iSCSI volumes are grown on their storage target; SPDK sees the new
        // size by itself (an NVMe namespace-attribute event, an iSCSI unit attention).
        let until = Instant::now() + self.settings.resize_wait;
        loop {
            let now = self.bdev(&name).await.map_err(spdk_err)?.map(|b| size(&b));
            match now {
                Some(s) if s >= bytes => return Ok(s),
                None => return Err(BackendError::new(format!("bdev {name} vanished"))),
                Some(s) if Instant::now() >= until => {
                    let how = match source {
                        Some(Source::Rbd) => "SPDK resized the RBD image but its bdev did not grow",
                        Some(Source::Aio) => "a local lab disk is grown by growing its file or device on the DPU",
                        _ => "grow the volume on its storage target first (SPDK cannot resize a remote NVMe-oF or iSCSI volume); SPDK reports the new size once the target announces it",
                    };
                    return Err(BackendError::with_kind(
                        ErrorKind::Unsupported,
                        format!(
                            "the volume is {s} bytes after waiting {:?}, not {bytes}: {how}",
                            self.settings.resize_wait
                        ),
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn info(&self, handle: &str) -> BResult<BlockInfo> {
        let b = self
            .find_bdev(handle)
            .await
            .map_err(spdk_err)?
            .ok_or_else(|| {
                BackendError::new(format!("the volume of {handle} is gone from SPDK"))
            })?;
        let size = b["num_blocks"].as_u64().unwrap_or(0) * b["block_size"].as_u64().unwrap_or(0);
        Ok(BlockInfo {
            capacity: size,
            allocation: size,
            physical: size,
        })
    }

    async fn stats(&self, handle: &str) -> BResult<BlockStats> {
        let name = match self.mapping(handle) {
            Some(m) => m.presented.bdev,
            None => self
                .find_bdev(handle)
                .await
                .map_err(spdk_err)?
                .and_then(|b| b["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| handle.to_string()),
        };
        // No params: `name` became `names` in later releases; the full list suits all.
        let v = self
            .spdk
            .call("bdev_get_iostat", None)
            .await
            .map_err(spdk_err)?;
        let tick_rate = v["tick_rate"].as_u64().unwrap_or(0);
        let b = v["bdevs"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["name"] == name.as_str()))
            .ok_or_else(|| BackendError::new(format!("SPDK has no I/O counters for {name}")))?;
        let n = |k: &str| b[k].as_u64().unwrap_or(0) as i64;
        let ns = |k: &str| match tick_rate {
            0 => 0,
            r => (b[k].as_u64().unwrap_or(0) as u128 * 1_000_000_000 / r as u128) as i64,
        };
        Ok(BlockStats {
            rd_req: n("num_read_ops"),
            rd_bytes: n("bytes_read"),
            wr_req: n("num_write_ops"),
            wr_bytes: n("bytes_written"),
            flush_req: 0,
            rd_total_ns: ns("read_latency_ticks"),
            wr_total_ns: ns("write_latency_ticks"),
            flush_total_ns: 0,
        })
    }

    async fn accepts(&self, spec: &DiskSpec) -> BResult<Option<String>> {
        if Source::of(&spec.volume).is_none() {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "disk {} ({}): SPDK on node {} connects NVMe-oF, iSCSI and RBD volumes and local block devices or files only",
                    spec.target, spec.source, self.settings.node
                ),
            ));
        }
        if matches!(&spec.volume, Volume::Rbd { monitors, .. } if monitors.is_empty()) {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "rbd disk {} names no Ceph monitor: give them as <host name=… port=…/> (SPDK on the DPU has no ceph.conf)",
                    spec.target
                ),
            ));
        }
        if spec.readonly && !self.frontend.read_only() {
            return Err(BackendError::with_kind(
                ErrorKind::Unsupported,
                format!(
                    "disk {} is <readonly/> but node {}'s {} frontend cannot present a disk read-only (SPDK's NVMe-oF namespaces have no such flag); the vhost-blk frontend can",
                    spec.target,
                    self.settings.node,
                    self.frontend.name()
                ),
            ));
        }
        let bus = spec.bus.as_deref().unwrap_or("virtio");
        match bus {
            "virtio" | "scsi" | "sata" | "nvme" => {}
            other => {
                return Err(BackendError::with_kind(
                    ErrorKind::Unsupported,
                    format!(
                        "disk bus '{other}' of disk {} cannot be presented by node {}'s {} frontend: use bus virtio, scsi, sata or nvme",
                        spec.target,
                        self.settings.node,
                        self.frontend.name()
                    ),
                ))
            }
        }
        if self.frontend.native_buses().contains(&bus) {
            return Ok(None);
        }
        Ok(Some(format!(
            "disk {} (bus {bus}) is presented to the host as {} by node {}'s {} frontend",
            spec.target,
            self.frontend.presents_as(),
            self.settings.node,
            self.frontend.name()
        )))
    }

    async fn heal(&self) -> BResult<Vec<String>> {
        use std::sync::atomic::Ordering::Relaxed;
        let _gate = self.gate.write().await;
        let round = self.heal_rounds.fetch_add(1, Relaxed);
        let mappings: Vec<Mapping> = self
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // Cheap check first: SPDK's notifications (bdev_register/unregister/resize). A full
        // comparison every 10th round catches what notifications cannot tell (a namespace
        // removed by another RPC client), and after a reconnect (a restarted SPDK has
        // nothing: its notification ids start again too).
        let ours = self.notified().await.map_err(spdk_err)?;
        let generation = self.spdk.generation();
        let restarted = self.healed_generation.swap(generation, Relaxed) != generation;
        if restarted {
            *self.notify_next.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if mappings.is_empty() || (!ours && !restarted && round % 10 != 0) {
            return Ok(Vec::new());
        }
        let mut done = Vec::new();
        // Volumes SPDK lost altogether (no bdev and no controller: the target restarted)
        // are connected again.
        let held: HashSet<String> = self.list().await?.into_iter().collect();
        for m in mappings
            .iter()
            .filter(|m| !held.contains(&m.presented.handle))
        {
            match self.attach_inner(&m.spec).await {
                Ok(dev) => done.push(format!(
                    "connected {} again after SPDK lost it ({dev})",
                    m.presented.handle
                )),
                Err(e) => {
                    tracing::warn!(node = %self.settings.node, handle = %m.presented.handle, "cannot connect a lost volume again: {e}")
                }
            }
        }
        let bdevs: HashSet<String> = as_array(
            "bdev_get_bdevs",
            self.spdk
                .call("bdev_get_bdevs", None)
                .await
                .map_err(spdk_err)?,
        )
        .map_err(spdk_err)?
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .collect();
        let desired: Vec<Presented> = mappings.into_iter().map(|m| m.presented).collect();
        let healed = self
            .frontend
            .heal(&self.spdk, &desired, &bdevs)
            .await
            .map_err(spdk_err)?;
        done.extend(
            healed
                .into_iter()
                .map(|h| format!("presented {h} again after SPDK dropped it")),
        );
        Ok(done)
    }

    fn heal_interval(&self) -> Option<Duration> {
        Some(self.settings.heal_interval)
    }

    async fn tidy(&self) -> BResult<Vec<String>> {
        let desired: Vec<Presented> = self
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|m| m.presented.clone())
            .collect();
        self.frontend
            .tidy(&self.spdk, &desired)
            .await
            .map_err(spdk_err)
    }
}

/// Fuzz target: the SPDK client and the disk backend against a target whose every reply is
/// taken from `data` (see [`crate::fuzz`]): mapping an NVMe-oF and an iSCSI volume, listing,
/// statistics, resize, healing, tidying and unmapping must cope with whatever comes back.
#[doc(hidden)]
pub fn fuzz_replies(data: &[u8]) {
    let script = crate::backend::scripted::script(data, 64);
    let peer_script = script.clone();
    let connect: rpc::Connector = Arc::new(move || {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(crate::backend::scripted::scripted_peer(
            server,
            peer_script.clone(),
            |id| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}}),
        ));
        client
    });
    let limit = Duration::from_secs(2);
    let disks = SpdkDisks::new(
        SpdkSettings {
            node: "fuzz".into(),
            initiator_iqn: "iqn.2026-11.io.metalvirt:fuzz".into(),
            rbd_block_size: 512,
            attach_timeout: limit,
            resize_wait: Duration::ZERO,
            heal_interval: Duration::from_secs(1),
        },
        Arc::new(Spdk::with_connector(connect, limit)),
        Box::new(Nvmf::new(
            Listen::Fabric {
                trtype: "TCP".into(),
                addr: "127.0.0.1".into(),
                port: 4420,
            },
            "nqn.2026-11.io.metalvirt",
            limit,
        )),
    );
    let dom = "mv-0123456789abcdef0123456789abcdef";
    let spec = |target: &str, volume: Volume, unit: u32| DiskSpec {
        handle: format!("{dom}-{target}"),
        target: target.into(),
        source: format!("{volume:?}"),
        readonly: false,
        auth: None,
        serial: Some("11111111-2222-3333-4444-555555555555".into()),
        volume,
        unit: Some(unit),
        bus: Some("virtio".into()),
        qos: None,
    };
    let vda = spec(
        "vda",
        Volume::Nvmf {
            transport: "tcp".into(),
            subnqn: "nqn.2016-06.io.spdk:vol".into(),
            host: "127.0.0.1".into(),
            port: 4420,
        },
        1,
    );
    let vdb = spec(
        "vdb",
        Volume::Iscsi {
            iqn: "iqn.2016-06.io.spdk:vol".into(),
            lun: 0,
            host: "127.0.0.1".into(),
            port: 3260,
        },
        2,
    );
    crate::backend::scripted::runtime().block_on(async {
        // Once the script is used up every reply is "Method not found": the steps after
        // that add little, so the run ends there (short inputs run fast).
        let left = || !script.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        let run = async {
            let _ = disks.attach(&vda).await;
            if left() {
                let _ = disks.attach(&vdb).await;
            }
            if left() {
                let _ = disks.list().await;
                let _ = disks.stats(&vda.handle).await;
                let _ = disks.info(&vdb.handle).await;
            }
            if left() {
                let _ = disks.resize(&vda.handle, 1 << 31).await;
                let _ = disks.heal().await;
                let _ = disks.tidy().await;
            }
            let _ = disks.detach(&vdb.handle).await;
            let _ = disks.detach(&vda.handle).await;
        };
        // Every call answers at once; a hang is a finding.
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the SPDK backend hung on a reply");
    });
}

#[cfg(test)]
mod tests {
    use super::double::Double;
    use super::*;

    const DOM: &str = "mv-0123456789abcdef0123456789abcdef";
    const PREFIX: &str = "nqn.2026-11.io.metalvirt";

    fn backend(d: &Double, frontend: Box<dyn Frontend>) -> SpdkDisks {
        SpdkDisks::new(
            SpdkSettings {
                node: "bm-0".into(),
                initiator_iqn: "iqn.2026-11.io.metalvirt:bm-0".into(),
                rbd_block_size: 512,
                attach_timeout: Duration::from_secs(10),
                resize_wait: Duration::from_millis(300),
                heal_interval: Duration::from_millis(100),
            },
            Arc::new(d.client("dpu")),
            frontend,
        )
    }

    fn nvmf() -> Box<dyn Frontend> {
        Box::new(Nvmf::new(
            Listen::Fabric {
                trtype: "TCP".into(),
                addr: "127.0.0.1".into(),
                port: 4421,
            },
            PREFIX,
            Duration::from_secs(10),
        ))
    }

    fn disk(target: &str, volume: Volume, unit: u32) -> DiskSpec {
        DiskSpec {
            handle: format!("{DOM}-{target}"),
            target: target.into(),
            source: format!("{volume:?}"),
            readonly: false,
            auth: None,
            serial: None,
            volume,
            unit: Some(unit),
            bus: Some("virtio".into()),
            qos: None,
        }
    }

    fn nvme_vol(nqn: &str, port: u16) -> Volume {
        Volume::Nvmf {
            transport: "tcp".into(),
            subnqn: nqn.into(),
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn iscsi_vol(name: &str) -> Volume {
        Volume::Iscsi {
            iqn: format!("iqn.2016-06.io.spdk:{name}"),
            lun: 0,
            host: "127.0.0.1".into(),
            port: 3260,
        }
    }

    async fn dpu_state(d: &Double) -> Value {
        d.call("dpu", "double_state", json!({"role": "dpu"}))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn maps_nvmf_and_iscsi_volumes_as_namespaces_in_boot_order_and_unmaps_all() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.nvmf_volume("nqn.2016-06.io.spdk:boot", "Boot", 64, 4420)
            .await;
        d.iscsi_volume("data1", 128).await;
        let b = backend(&d, nvmf());
        let mut boot = disk("vda", nvme_vol("nqn.2016-06.io.spdk:boot", 4420), 1);
        boot.serial = Some("11111111-2222-4333-8444-555555555555".into());
        let data = disk("vdb", iscsi_vol("data1"), 2);
        // Both at once, the data disk first: the namespaces still come out in boot order.
        let (r2, r1) = tokio::join!(b.attach(&data), b.attach(&boot));
        let nqn = format!("{PREFIX}:{DOM}");
        assert_eq!(r1.unwrap(), format!("namespace 1 of {nqn}"));
        assert_eq!(r2.unwrap(), format!("namespace 2 of {nqn}"));
        let st = dpu_state(&d).await;
        let sub = &st["subsystems"][&nqn];
        assert_eq!(
            sub["namespaces"],
            json!({"1": format!("{DOM}-vdan1"), "2": format!("{DOM}-vdb")})
        );
        assert_eq!(sub["listeners"][0]["traddr"], "127.0.0.1");
        assert_eq!(st["bdevs"][format!("{DOM}-vdb")]["num_blocks"], 262144);
        // The namespace carries the volume id as uuid and nguid.
        let subs = d
            .call("dpu", "nvmf_get_subsystems", json!({"nqn": nqn}))
            .await
            .unwrap();
        let ns = &subs[0]["namespaces"][0];
        assert_eq!(ns["uuid"], "11111111-2222-4333-8444-555555555555");
        assert_eq!(ns["nguid"], "11111111222243338444555555555555");
        assert_eq!(
            b.list().await.unwrap(),
            vec![format!("{DOM}-vda"), format!("{DOM}-vdb")]
        );
        let info = b.info(&boot.handle).await.unwrap();
        assert_eq!(info.capacity, 64 << 20);
        assert_eq!(b.stats(&data.handle).await.unwrap().rd_req, 0);
        // Attaching again (a reconcile) adopts: no new objects, same place.
        assert_eq!(
            b.attach(&data).await.unwrap(),
            format!("namespace 2 of {nqn}")
        );
        // Unmapping both removes namespaces, bdevs, controller and the subsystem.
        let (x, y) = tokio::join!(b.detach(&boot.handle), b.detach(&data.handle));
        x.unwrap();
        y.unwrap();
        let st = dpu_state(&d).await;
        assert_eq!(st["subsystems"], json!({}), "{st}");
        assert_eq!(st["bdevs"], json!({}), "{st}");
        assert_eq!(st["controllers"], json!({}), "{st}");
        assert!(b.list().await.unwrap().is_empty());
        // Unknown handles unmap fine.
        b.detach(&boot.handle).await.unwrap();
        // The iSCSI bdev was looked up before it was created (a duplicate name leaks a
        // session in SPDK), and no call carried a key SPDK does not know.
        let calls = d.calls("dpu").await;
        let i = calls
            .iter()
            .position(|(m, _)| m == "bdev_iscsi_create")
            .unwrap();
        assert!(calls[..i]
            .iter()
            .any(|(m, p)| m == "bdev_get_bdevs" && p["name"] == data.handle.as_str()));
        assert_eq!(
            calls[i].1,
            json!({"name": data.handle, "initiator_iqn": "iqn.2026-11.io.metalvirt:bm-0",
                   "url": "iscsi://127.0.0.1:3260/iqn.2016-06.io.spdk:data1/0"})
        );
    }

    #[tokio::test]
    async fn a_failure_removes_what_the_disk_had_made() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.nvmf_volume("nqn.2016-06.io.spdk:v1", "V1", 16, 4420)
            .await;
        let b = backend(&d, nvmf());
        d.call(
            "dpu",
            "double_rule",
            json!({"method": "nvmf_subsystem_add_ns", "error": {"code": -32602, "message": "Invalid parameters"}}),
        )
        .await
        .unwrap();
        let e = b
            .attach(&disk("vda", nvme_vol("nqn.2016-06.io.spdk:v1", 4420), 1))
            .await
            .unwrap_err();
        assert!(
            e.msg
                .contains("nvmf_subsystem_add_ns failed: Invalid parameters (code -32602)"),
            "{e}"
        );
        let st = dpu_state(&d).await;
        assert_eq!(st["controllers"], json!({}), "{st}");
        assert_eq!(st["subsystems"], json!({}), "{st}");
        // A volume that is not there: SPDK's own error, nothing left behind.
        let e = b
            .attach(&disk("vdb", nvme_vol("nqn.2016-06.io.spdk:nope", 4420), 1))
            .await
            .unwrap_err();
        assert!(
            e.msg
                .contains("bdev_nvme_attach_controller failed: Input/output error (code -5)"),
            "{e}"
        );
        let e = b
            .attach(&disk("vdc", iscsi_vol("nope"), 1))
            .await
            .unwrap_err();
        assert!(e.msg.contains("iSCSI error (251658241)."), "{e}");
        assert_eq!(dpu_state(&d).await["bdevs"], json!({}));
    }

    #[tokio::test]
    async fn a_namespace_dropped_when_the_remote_volume_blinks_is_presented_again() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.nvmf_volume("nqn.2016-06.io.spdk:v1", "V1", 16, 4420)
            .await;
        let b = backend(&d, nvmf());
        let vda = disk("vda", nvme_vol("nqn.2016-06.io.spdk:v1", 4420), 1);
        b.attach(&vda).await.unwrap();
        let nqn = format!("{PREFIX}:{DOM}");
        assert!(b.heal().await.unwrap().is_empty());
        // The volume vanishes on its target: SPDK drops the bdev and the namespace.
        d.call(
            "storage",
            "nvmf_subsystem_remove_ns",
            json!({"nqn": "nqn.2016-06.io.spdk:v1", "nsid": 1}),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            dpu_state(&d).await["subsystems"][&nqn]["namespaces"],
            json!({})
        );
        assert!(
            b.heal().await.unwrap().is_empty(),
            "nothing to present while it is gone"
        );
        // It comes back: SPDK re-registers the bdev but not the namespace; heal does.
        d.call(
            "storage",
            "nvmf_subsystem_add_ns",
            json!({"nqn": "nqn.2016-06.io.spdk:v1", "namespace": {"bdev_name": "V1", "nsid": 1}}),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.heal().await.unwrap().len(), 1);
        assert_eq!(
            dpu_state(&d).await["subsystems"][&nqn]["namespaces"],
            json!({"1": format!("{DOM}-vdan1")})
        );
    }

    #[tokio::test]
    async fn a_new_daemon_adopts_finds_and_tidies_what_spdk_holds() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.nvmf_volume("nqn.2016-06.io.spdk:v1", "V1", 16, 4420)
            .await;
        d.iscsi_volume("d2", 16).await;
        let first = backend(&d, nvmf());
        let vda = disk("vda", nvme_vol("nqn.2016-06.io.spdk:v1", 4420), 1);
        let vdb = disk("vdb", iscsi_vol("d2"), 2);
        first.attach(&vda).await.unwrap();
        first.attach(&vdb).await.unwrap();
        // An orphan subsystem of another (gone) domain.
        let orphan = format!("{PREFIX}:mv-ffffffffffffffffffffffffffffffff");
        d.call(
            "dpu",
            "nvmf_create_subsystem",
            json!({"nqn": orphan, "allow_any_host": true}),
        )
        .await
        .unwrap();
        drop(first);
        // A restarted daemon: lists from SPDK alone, adopts by attaching again, tidies.
        let b = backend(&d, nvmf());
        assert_eq!(
            b.list().await.unwrap(),
            vec![vda.handle.clone(), vdb.handle.clone()]
        );
        b.attach(&vda).await.unwrap();
        assert_eq!(b.tidy().await.unwrap(), vec![orphan.clone()]);
        let st = dpu_state(&d).await;
        assert!(st["subsystems"].get(&orphan).is_none());
        // vdb was not adopted (its domain's journal would not hold it): unmapped by handle.
        b.detach(&vdb.handle).await.unwrap();
        assert_eq!(b.list().await.unwrap(), vec![vda.handle.clone()]);
        assert_eq!(
            dpu_state(&d).await["subsystems"][format!("{PREFIX}:{DOM}")]["namespaces"],
            json!({"1": format!("{DOM}-vdan1")})
        );
    }

    #[tokio::test]
    async fn rbd_needs_the_key_resizes_and_refuses_to_wait_forever_for_remote_growth() {
        let d = Double::start(&["storage", "dpu"], &[]);
        let key = b"0123456789abcdef";
        use base64::Engine;
        let key64 = base64::engine::general_purpose::STANDARD.encode(key);
        d.call(
            "dpu",
            "double_ceph_create",
            json!({"mon_host": "127.0.0.1:6789", "user": "cinder", "key": key64, "pool": "volumes", "image": "v1", "size_mib": 64}),
        )
        .await
        .unwrap();
        let b = backend(&d, nvmf());
        let mut vdc = disk(
            "vdc",
            Volume::Rbd {
                pool: "volumes".into(),
                image: "v1".into(),
                monitors: vec!["127.0.0.1:6789".into()],
            },
            1,
        );
        vdc.auth = Some(crate::backend::DiskAuth {
            username: Some("cinder".into()),
            secret_uuid: Uuid::nil().to_string(),
            key: Some(crate::secret_value::SecretValue::new(key.to_vec())),
        });
        b.attach(&vdc).await.unwrap();
        assert_eq!(b.info(&vdc.handle).await.unwrap().capacity, 64 << 20);
        assert_eq!(b.resize(&vdc.handle, 128 << 20).await.unwrap(), 128 << 20);
        // A remote NVMe-oF volume is grown on its target; until then, a clear refusal.
        d.nvmf_volume("nqn.2016-06.io.spdk:v2", "V2", 16, 4420)
            .await;
        let vdd = disk("vdd", nvme_vol("nqn.2016-06.io.spdk:v2", 4420), 2);
        b.attach(&vdd).await.unwrap();
        let e = b.resize(&vdd.handle, 32 << 20).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(
            e.msg
                .contains("grow the volume on its storage target first"),
            "{e}"
        );
        d.call(
            "storage",
            "bdev_null_resize",
            json!({"name": "V2", "new_size": 32}),
        )
        .await
        .unwrap();
        assert_eq!(b.resize(&vdd.handle, 32 << 20).await.unwrap(), 32 << 20);
        // A wrong key: SPDK refuses the cluster, nothing is left.
        let mut bad = vdc.clone();
        bad.handle = format!("{DOM}-vde");
        bad.auth.as_mut().unwrap().username = Some("other".into());
        assert!(b.attach(&bad).await.is_err());
        assert!(dpu_state(&d).await["bdevs"].get(&bad.handle).is_none());
        let calls = d.calls("dpu").await;
        let reg = calls
            .iter()
            .find(|(m, _)| m == "bdev_rbd_register_cluster")
            .unwrap();
        assert_eq!(reg.1["config_param"]["key"], key64.as_str());
        assert_eq!(reg.1["user_id"], "cinder");
    }

    #[tokio::test]
    async fn a_restarted_spdk_gets_its_volumes_and_presentations_back() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.nvmf_volume("nqn.2016-06.io.spdk:v1", "V1", 16, 4420)
            .await;
        d.iscsi_volume("d2", 16).await;
        let b = backend(&d, nvmf());
        let vda = disk("vda", nvme_vol("nqn.2016-06.io.spdk:v1", 4420), 1);
        let vdb = disk("vdb", iscsi_vol("d2"), 2);
        b.attach(&vda).await.unwrap();
        b.attach(&vdb).await.unwrap();
        d.call("storage", "double_restart", json!({"role": "dpu"}))
            .await
            .unwrap();
        assert_eq!(dpu_state(&d).await["bdevs"], json!({}));
        // A heal reconnects (the call in flight may see the old connection go first), finds
        // a new target and maps everything again at the same nsids.
        let mut healed = Vec::new();
        for _ in 0..3 {
            healed.extend(b.heal().await.unwrap_or_default());
        }
        assert_eq!(
            healed.iter().filter(|h| h.starts_with("connected")).count(),
            2,
            "{healed:?}"
        );
        let nqn = format!("{PREFIX}:{DOM}");
        assert_eq!(
            dpu_state(&d).await["subsystems"][&nqn]["namespaces"],
            json!({"1": format!("{DOM}-vdan1"), "2": format!("{DOM}-vdb")})
        );
        // And a new disk maps on the new target (no stale "transport made" memory).
        d.nvmf_volume("nqn.2016-06.io.spdk:v3", "V3", 16, 4420)
            .await;
        b.attach(&disk("vdc", nvme_vol("nqn.2016-06.io.spdk:v3", 4420), 3))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_bdev_of_a_kind_metalvirt_does_not_make_is_left_alone_loudly() {
        let d = Double::start(&["dpu"], &[]);
        let h = format!("{DOM}-vdz");
        d.call(
            "dpu",
            "bdev_null_create",
            json!({"name": h, "num_blocks": 1024, "block_size": 512}),
        )
        .await
        .unwrap();
        let b = backend(&d, nvmf());
        let e = b.detach(&h).await.unwrap_err();
        assert!(e.msg.contains("metalvirt does not make; left alone"), "{e}");
        assert!(dpu_state(&d).await["bdevs"].get(&h).is_some());
    }

    #[tokio::test]
    async fn vhost_blk_presents_one_controller_per_disk() {
        let d = Double::start(&["storage", "dpu"], &[]);
        d.iscsi_volume("d1", 16).await;
        let b = backend(&d, Box::new(VhostBlk::new(Duration::from_secs(5))));
        let mut vda = disk("vda", iscsi_vol("d1"), 1);
        vda.readonly = true;
        assert_eq!(
            b.attach(&vda).await.unwrap(),
            format!("vhost-blk controller {}", vda.handle)
        );
        let st = dpu_state(&d).await;
        assert_eq!(st["vhost"][&vda.handle]["bdev"], vda.handle.as_str());
        b.detach(&vda.handle).await.unwrap();
        let st = dpu_state(&d).await;
        assert_eq!(st["vhost"], json!({}));
        assert_eq!(st["bdevs"], json!({}));
    }

    #[tokio::test]
    async fn buses_the_frontend_cannot_present_are_refused_others_noted() {
        let b = SpdkDisks::new(
            SpdkSettings {
                node: "bm-0".into(),
                initiator_iqn: "x".into(),
                rbd_block_size: 512,
                attach_timeout: Duration::from_secs(1),
                resize_wait: Duration::from_secs(1),
                heal_interval: Duration::from_secs(1),
            },
            Arc::new(Spdk::new("/nonexistent", Duration::from_secs(1))),
            nvmf(),
        );
        let mut d = disk("hda", iscsi_vol("x"), 1);
        d.bus = Some("ide".into());
        let e = b.accepts(&d).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(e.msg.contains("disk bus 'ide'"), "{e}");
        d.bus = Some("virtio".into());
        assert!(b
            .accepts(&d)
            .await
            .unwrap()
            .unwrap()
            .contains("as an NVMe namespace"));
        d.bus = Some("nvme".into());
        assert_eq!(b.accepts(&d).await.unwrap(), None);
        d.readonly = true;
        assert!(b
            .accepts(&d)
            .await
            .unwrap_err()
            .msg
            .contains("cannot present a disk read-only"));
        d.readonly = false;
        d.volume = Volume::Other;
        assert_eq!(
            b.accepts(&d).await.unwrap_err().kind,
            ErrorKind::Unsupported
        );
    }

    fn spec(handle: &str, serial: Option<&str>) -> DiskSpec {
        DiskSpec {
            handle: handle.into(),
            target: "vda".into(),
            source: "x".into(),
            readonly: false,
            auth: None,
            serial: serial.map(str::to_string),
            volume: Volume::Other,
            unit: None,
            bus: None,
            qos: None,
        }
    }

    #[test]
    fn namespace_identity_is_the_volume_id_when_the_serial_is_one() {
        let vol = "11111111-2222-4333-8444-555555555555";
        assert_eq!(disk_ident(&spec("mv-a-vda", Some(vol))).to_string(), vol);
        let a = disk_ident(&spec("mv-a-vda", Some("nvme-boot-0")));
        assert_eq!(a, disk_ident(&spec("mv-b-vdb", Some("nvme-boot-0"))));
        assert_ne!(
            disk_ident(&spec("mv-a-vda", None)),
            disk_ident(&spec("mv-a-vdb", None))
        );
    }

    #[test]
    fn domain_part_of_a_handle() {
        let h = "mv-0123456789abcdef0123456789abcdef-vda";
        assert_eq!(domain_of(h), "mv-0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn iscsi_urls_carry_chap_and_bracket_ipv6() {
        let mut s = spec("mv-a-sdb", None);
        assert_eq!(
            iscsi_url(&s, "iqn.2016-06.io.spdk:disk1", 0, "fd00::1", 3260).unwrap(),
            "iscsi://[fd00::1]:3260/iqn.2016-06.io.spdk:disk1/0"
        );
        s.auth = Some(crate::backend::DiskAuth {
            username: Some("chap".into()),
            secret_uuid: Uuid::nil().to_string(),
            key: Some(crate::secret_value::SecretValue::new(b"s3cret".to_vec())),
        });
        assert_eq!(
            iscsi_url(&s, "iqn.x:d", 1, "192.0.2.1", 3260).unwrap(),
            "iscsi://chap%s3cret@192.0.2.1:3260/iqn.x:d/1"
        );
        s.auth.as_mut().unwrap().key = Some(crate::secret_value::SecretValue::new(b"a@b".to_vec()));
        let e = iscsi_url(&s, "iqn.x:d", 1, "192.0.2.1", 3260).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(!e.msg.contains("a@b"));
    }
}
