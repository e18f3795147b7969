//! How the DPU presents a mapped bdev to the bare-metal host: the [`Frontend`] trait and its
//! SPDK implementations — an NVMe-oF subsystem per domain ([`Nvmf`], over TCP or RDMA for a
//! host that boots from NVMe-oF, or over vfio-user for an emulated NVMe controller), or a
//! vhost-blk controller per disk ([`VhostBlk`]). A DPU vendor's emulation RPCs (NVIDIA SNAP's
//! `nvme_controller_create`, …) fit as one more implementation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use uuid::Uuid;

use super::rpc::{code, RpcError, Spdk};

/// One disk as a frontend presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The disk's handle (`mv-<domain>-<target>`).
    pub handle: String,
    /// The domain part of the handle (`mv-<domain>`).
    pub domain: String,
    /// The bdev to present.
    pub bdev: String,
    /// Position on the host's controller (NVMe nsid); `None`: the frontend picks.
    pub unit: Option<u32>,
    /// Namespace identity the host sees (NVMe uuid and nguid).
    pub ident: Uuid,
    /// Read-only.
    pub readonly: bool,
}

/// Where a disk ended up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Human-readable device, for the journal and messages.
    pub device: String,
    /// The position it got (NVMe nsid), when the frontend has positions.
    pub unit: Option<u32>,
}

/// A way of presenting bdevs to the host.
#[async_trait]
pub trait Frontend: Send + Sync {
    /// Name, as in the configuration.
    fn name(&self) -> &'static str;
    /// What the host sees, for messages ("an NVMe namespace").
    fn presents_as(&self) -> &'static str;
    /// The `<target bus>` values that match what the host sees.
    fn native_buses(&self) -> &'static [&'static str];
    /// Whether it can present a disk read-only.
    fn read_only(&self) -> bool;
    /// Makes what presenting a disk of `domain` needs and does not depend on its bdev (the
    /// transport, the domain's subsystem); runs while the volume connects.
    async fn prepare(&self, _spdk: &Spdk, _domain: &str) -> Result<(), RpcError> {
        Ok(())
    }
    /// Presents `p.bdev`. Adopts a presentation already there (after a daemon restart).
    async fn present(&self, spdk: &Spdk, p: &Presented) -> Result<Placement, RpcError>;
    /// Withdraws what presents `handle`'s bdevs; nothing there is success.
    async fn withdraw(&self, spdk: &Spdk, domain: &str, handle: &str) -> Result<(), RpcError>;
    /// Presents again what SPDK withdrew on its own while its bdev is back (`bdevs`: the
    /// bdevs that exist now); returns the handles re-presented.
    async fn heal(
        &self,
        spdk: &Spdk,
        desired: &[Presented],
        bdevs: &HashSet<String>,
    ) -> Result<Vec<String>, RpcError>;
    /// Removes presentations of metalvirt's that no mapped disk uses; returns their names.
    async fn tidy(&self, spdk: &Spdk, desired: &[Presented]) -> Result<Vec<String>, RpcError>;
}

/// Whether bdev `bdev` belongs to disk `handle`: the bdev of the same name, or an NVMe
/// namespace bdev of the controller of that name (`<handle>n<nsid>`).
pub fn belongs(bdev: &str, handle: &str) -> bool {
    bdev.strip_prefix(handle).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix('n')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The NVMe-oF transport a [`Nvmf`] frontend listens on for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// NVMe/TCP or NVMe/RDMA on an address of the DPU (`trtype` TCP or RDMA).
    Fabric {
        /// `TCP` or `RDMA`.
        trtype: String,
        /// Address.
        addr: String,
        /// Port.
        port: u16,
    },
    /// vfio-user: the emulated controller's socket directory (no `adrfam`).
    VfioUser {
        /// Directory.
        path: String,
    },
}

impl Listen {
    fn trtype(&self) -> &str {
        match self {
            Listen::Fabric { trtype, .. } => trtype,
            Listen::VfioUser { .. } => "VFIOUSER",
        }
    }

    fn address(&self) -> Value {
        match self {
            Listen::Fabric { trtype, addr, port } => json!({
                "trtype": trtype.to_ascii_lowercase(),
                "adrfam": if addr.contains(':') { "ipv6" } else { "ipv4" },
                "traddr": addr,
                "trsvcid": port.to_string(),
            }),
            // SPDK refuses an adrfam on a VFIOUSER listener.
            Listen::VfioUser { path } => json!({
                "trtype": "VFIOUSER",
                "traddr": path,
                "trsvcid": "0",
            }),
        }
    }

    /// Whether a listener SPDK reports (canonical case: `TCP`, `IPv4`) is this one.
    fn matches(&self, l: &Value) -> bool {
        let s = |k: &str| l.get(k).and_then(Value::as_str).unwrap_or("");
        match self {
            Listen::Fabric { trtype, addr, port } => {
                s("trtype").eq_ignore_ascii_case(trtype)
                    && s("traddr") == addr
                    && s("trsvcid") == port.to_string()
            }
            Listen::VfioUser { path } => s("trtype") == "VFIOUSER" && s("traddr") == path,
        }
    }
}

/// One NVMe-oF subsystem per domain (`<prefix>:<domain>`), its disks as namespaces in boot
/// order with uuid and nguid set, listening where the host connects.
pub struct Nvmf {
    listen: Listen,
    prefix: String,
    /// The one host the subsystems admit (`None`: any host, for vfio-user, where the only
    /// host is the one on the PCIe side).
    host: Option<String>,
    timeout: Duration,
    /// What was made on the target, per connection generation (a restarted SPDK has none).
    made: Mutex<Made>,
}

type Once = Arc<tokio::sync::OnceCell<()>>;

#[derive(Default)]
struct Made {
    generation: u64,
    transport: Once,
    subsystems: HashMap<String, Once>,
}

impl Nvmf {
    /// A frontend with subsystems named `<prefix>:<domain>`; `timeout` limits the calls that
    /// change namespaces (a sick target takes tens of seconds).
    pub fn new(listen: Listen, prefix: &str, timeout: Duration) -> Self {
        Nvmf {
            listen,
            prefix: prefix.to_string(),
            host: None,
            timeout,
            made: Mutex::new(Made::default()),
        }
    }

    /// Admits only `host` (an NVMe host NQN) to the subsystems, instead of any host.
    pub fn admitting(mut self, host: Option<String>) -> Self {
        self.host = host;
        self
    }

    /// What was made, forgotten when the connection to SPDK is a new one.
    fn made<T>(&self, spdk: &Spdk, f: impl FnOnce(&mut Made) -> T) -> T {
        let mut m = self.made.lock().unwrap_or_else(|e| e.into_inner());
        let g = spdk.generation();
        if m.generation != g {
            *m = Made {
                generation: g,
                ..Made::default()
            };
        }
        f(&mut m)
    }

    /// The subsystem NQN of a domain.
    pub fn nqn(&self, domain: &str) -> String {
        format!("{}:{domain}", self.prefix)
    }

    fn cell(&self, spdk: &Spdk, nqn: &str) -> Once {
        self.made(spdk, |m| {
            m.subsystems.entry(nqn.to_string()).or_default().clone()
        })
    }

    /// Forgets that the subsystem exists — only if `seen` is still what we hold, so two
    /// disks that both found it gone do not undo each other's re-creation.
    fn forget(&self, spdk: &Spdk, nqn: &str, seen: Option<&Once>) {
        self.made(spdk, |m| {
            if seen.is_none_or(|s| m.subsystems.get(nqn).is_some_and(|c| Arc::ptr_eq(c, s))) {
                m.subsystems.remove(nqn);
            }
        })
    }

    async fn ensure_transport(&self, spdk: &Spdk) -> Result<(), RpcError> {
        let trtype = self.listen.trtype();
        let cell = self.made(spdk, |m| m.transport.clone());
        cell.get_or_try_init(|| async {
            match spdk
                .call("nvmf_create_transport", Some(json!({"trtype": trtype})))
                .await
            {
                Err(e) if e.is(code::INTERNAL, Some("already exists")) => Ok(()),
                r => r.map(drop),
            }
        })
        .await
        .map(drop)
    }

    async fn subsystem(&self, spdk: &Spdk, nqn: &str) -> Result<Option<Value>, RpcError> {
        match spdk
            .call("nvmf_get_subsystems", Some(json!({"nqn": nqn})))
            .await
        {
            Ok(v) => Ok(v.as_array().and_then(|a| a.first()).cloned()),
            Err(e) if e.is_no_device() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn ensure_subsystem(
        &self,
        spdk: &Spdk,
        nqn: &str,
        domain: &str,
    ) -> Result<Once, RpcError> {
        let cell = self.cell(spdk, nqn);
        cell.get_or_try_init(|| async {
            let serial: String = format!("MV{}", domain.trim_start_matches("mv-"))
                .chars()
                .take(20)
                .collect();
            let created = spdk
                .call_within(
                    "nvmf_create_subsystem",
                    Some(json!({
                        "nqn": nqn,
                        "allow_any_host": self.host.is_none(),
                        "serial_number": serial,
                        "model_number": "metalvirt disk",
                    })),
                    self.timeout,
                )
                .await;
            let (listening, admitted) = match created {
                Ok(_) => (false, false),
                // There already (a start interrupted by a crash): adopt it.
                Err(e) if e.is(code::INTERNAL, Some("Unable to create subsystem")) => {
                    match self.subsystem(spdk, nqn).await? {
                        Some(s) => (
                            s["listen_addresses"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|l| self.listen.matches(l))),
                            self.host.as_deref().is_none_or(|h| {
                                s["hosts"]
                                    .as_array()
                                    .is_some_and(|a| a.iter().any(|x| x["nqn"] == h))
                            }),
                        ),
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if let (Some(host), false) = (&self.host, admitted) {
                spdk.call_within(
                    "nvmf_subsystem_add_host",
                    Some(json!({"nqn": nqn, "host": host})),
                    self.timeout,
                )
                .await?;
            }
            if !listening {
                let added = spdk
                    .call_within(
                        "nvmf_subsystem_add_listener",
                        Some(json!({"nqn": nqn, "listen_address": self.listen.address()})),
                        self.timeout,
                    )
                    .await;
                if let Err(e) = added {
                    // Added meanwhile by another client of ours adopting the same subsystem?
                    let there = self.subsystem(spdk, nqn).await?.is_some_and(|s| {
                        s["listen_addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|l| self.listen.matches(l)))
                    });
                    if !there {
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(cell)
    }

    async fn add_ns(&self, spdk: &Spdk, nqn: &str, p: &Presented) -> Result<u32, RpcError> {
        let mut ns = json!({
            "bdev_name": p.bdev,
            "uuid": p.ident.hyphenated().to_string(),
            "nguid": p.ident.simple().to_string().to_ascii_uppercase(),
        });
        if let Some(u) = p.unit {
            ns["nsid"] = json!(u);
        }
        let added = spdk
            .call_within(
                "nvmf_subsystem_add_ns",
                Some(json!({"nqn": nqn, "namespace": ns})),
                self.timeout,
            )
            .await;
        match added {
            Ok(v) => v.as_u64().map(|n| n as u32).ok_or(RpcError::Protocol {
                method: "nvmf_subsystem_add_ns".into(),
                detail: format!("expected an nsid, got {v}"),
            }),
            Err(e) if e.is(code::INVALID_PARAMS, None) => {
                // Already presented (adopting after a restart)? Otherwise say why it failed.
                let sub = self.subsystem(spdk, nqn).await?;
                let namespaces = sub
                    .as_ref()
                    .and_then(|s| s["namespaces"].as_array().cloned())
                    .unwrap_or_default();
                if let Some(n) = namespaces
                    .iter()
                    .find(|n| n["bdev_name"] == p.bdev.as_str())
                {
                    return Ok(n["nsid"].as_u64().unwrap_or(0) as u32);
                }
                let taken = p.unit.and_then(|u| {
                    namespaces
                        .iter()
                        .find(|n| n["nsid"].as_u64() == Some(u as u64))
                        .map(|n| (u, n["bdev_name"].as_str().unwrap_or("?").to_string()))
                });
                Err(match (sub, taken) {
                    (None, _) => RpcError::Rpc {
                        method: "nvmf_subsystem_add_ns".into(),
                        code: code::INVALID_PARAMS,
                        message: format!("subsystem {nqn} is gone"),
                    },
                    (_, Some((u, other))) => RpcError::Rpc {
                        method: "nvmf_subsystem_add_ns".into(),
                        code: code::INVALID_PARAMS,
                        message: format!("namespace {u} of {nqn} is taken by bdev {other}"),
                    },
                    _ => e,
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Frontend for Nvmf {
    fn name(&self) -> &'static str {
        match self.listen {
            Listen::Fabric { .. } => "nvmf",
            Listen::VfioUser { .. } => "vfio-user",
        }
    }

    fn presents_as(&self) -> &'static str {
        "an NVMe namespace"
    }

    fn native_buses(&self) -> &'static [&'static str] {
        &["nvme"]
    }

    fn read_only(&self) -> bool {
        // SPDK's nvmf namespaces have no read-only flag.
        false
    }

    async fn prepare(&self, spdk: &Spdk, domain: &str) -> Result<(), RpcError> {
        self.ensure_transport(spdk).await?;
        self.ensure_subsystem(spdk, &self.nqn(domain), domain)
            .await
            .map(drop)
    }

    async fn present(&self, spdk: &Spdk, p: &Presented) -> Result<Placement, RpcError> {
        let nqn = self.nqn(&p.domain);
        self.ensure_transport(spdk).await?;
        let cell = self.ensure_subsystem(spdk, &nqn, &p.domain).await?;
        let nsid = match self.add_ns(spdk, &nqn, p).await {
            // Deleted behind our back since we made it: make it again, once.
            Err(e) if e.to_string().contains("is gone") => {
                self.forget(spdk, &nqn, Some(&cell));
                self.ensure_subsystem(spdk, &nqn, &p.domain).await?;
                self.add_ns(spdk, &nqn, p).await?
            }
            r => r?,
        };
        Ok(Placement {
            device: format!("namespace {nsid} of {nqn}"),
            unit: Some(nsid),
        })
    }

    async fn withdraw(&self, spdk: &Spdk, domain: &str, handle: &str) -> Result<(), RpcError> {
        let nqn = self.nqn(domain);
        let Some(sub) = self.subsystem(spdk, &nqn).await? else {
            self.forget(spdk, &nqn, None);
            return Ok(());
        };
        let namespaces = sub["namespaces"].as_array().cloned().unwrap_or_default();
        let mine: Vec<u64> = namespaces
            .iter()
            .filter(|n| n["bdev_name"].as_str().is_some_and(|b| belongs(b, handle)))
            .filter_map(|n| n["nsid"].as_u64())
            .collect();
        for nsid in &mine {
            match spdk
                .call_within(
                    "nvmf_subsystem_remove_ns",
                    Some(json!({"nqn": nqn, "nsid": nsid})),
                    self.timeout,
                )
                .await
            {
                Ok(_) => {}
                // Gone meanwhile (its bdev vanished): what we wanted.
                Err(e) if e.is(code::INVALID_PARAMS, None) => {}
                Err(e) => return Err(e),
            }
        }
        if namespaces.len() > mine.len() && mine.is_empty() {
            return Ok(());
        }
        // The domain's last disk: the subsystem goes too. Asked again after our removal:
        // disks unmapped together each see the others' namespaces at first, and the last to
        // finish sees none (a second delete finds it gone, which is fine).
        match self.subsystem(spdk, &nqn).await? {
            Some(s) if s["namespaces"].as_array().is_some_and(|a| a.is_empty()) => {
                match spdk
                    .call_within(
                        "nvmf_delete_subsystem",
                        Some(json!({"nqn": nqn})),
                        self.timeout,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is(code::INVALID_PARAMS, None) => {}
                    Err(e) => return Err(e),
                }
                self.forget(spdk, &nqn, None);
            }
            None => self.forget(spdk, &nqn, None),
            Some(_) => {}
        }
        Ok(())
    }

    async fn heal(
        &self,
        spdk: &Spdk,
        desired: &[Presented],
        bdevs: &HashSet<String>,
    ) -> Result<Vec<String>, RpcError> {
        let subs = spdk.call("nvmf_get_subsystems", None).await?;
        let present: HashMap<String, HashSet<String>> = subs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let nqn = s["nqn"].as_str()?.to_string();
                let ns = s["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["bdev_name"].as_str().map(str::to_string))
                    .collect();
                Some((nqn, ns))
            })
            .collect();
        let mut healed = Vec::new();
        for p in desired {
            let nqn = self.nqn(&p.domain);
            let shown = present.get(&nqn).is_some_and(|ns| ns.contains(&p.bdev));
            if shown || !bdevs.contains(&p.bdev) {
                continue;
            }
            if !present.contains_key(&nqn) {
                self.forget(spdk, &nqn, None);
            }
            self.present(spdk, p).await?;
            healed.push(p.handle.clone());
        }
        Ok(healed)
    }

    async fn tidy(&self, spdk: &Spdk, desired: &[Presented]) -> Result<Vec<String>, RpcError> {
        let keep: HashSet<String> = desired.iter().map(|p| self.nqn(&p.domain)).collect();
        let mine = format!("{}:mv-", self.prefix);
        let subs = spdk.call("nvmf_get_subsystems", None).await?;
        let mut removed = Vec::new();
        for s in subs.as_array().into_iter().flatten() {
            let Some(nqn) = s["nqn"].as_str() else {
                continue;
            };
            if !nqn.starts_with(&mine) || keep.contains(nqn) {
                continue;
            }
            match spdk
                .call_within(
                    "nvmf_delete_subsystem",
                    Some(json!({"nqn": nqn})),
                    self.timeout,
                )
                .await
            {
                Ok(_) => removed.push(nqn.to_string()),
                Err(e) if e.is(code::INVALID_PARAMS, None) => {}
                Err(e) => return Err(e),
            }
            self.forget(spdk, nqn, None);
        }
        Ok(removed)
    }
}

/// A vhost-blk controller per disk, named by the disk's handle (its socket is
/// `<vhost socket dir>/<handle>`).
pub struct VhostBlk {
    timeout: Duration,
}

impl VhostBlk {
    /// The frontend; `timeout` limits controller creation and removal.
    pub fn new(timeout: Duration) -> Self {
        VhostBlk { timeout }
    }

    async fn controllers(&self, spdk: &Spdk) -> Result<Vec<Value>, RpcError> {
        let v = spdk.call("vhost_get_controllers", None).await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    async fn delete(&self, spdk: &Spdk, ctrlr: &str) -> Result<(), RpcError> {
        match spdk
            .call_within(
                "vhost_delete_controller",
                Some(json!({"ctrlr": ctrlr})),
                self.timeout,
            )
            .await
        {
            Err(e) if e.is_no_device() => Ok(()),
            r => r.map(drop),
        }
    }
}

#[async_trait]
impl Frontend for VhostBlk {
    fn name(&self) -> &'static str {
        "vhost-blk"
    }

    fn presents_as(&self) -> &'static str {
        "a virtio-blk device"
    }

    fn native_buses(&self) -> &'static [&'static str] {
        &["virtio"]
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn present(&self, spdk: &Spdk, p: &Presented) -> Result<Placement, RpcError> {
        let mut params = json!({"ctrlr": p.handle, "dev_name": p.bdev});
        if p.readonly {
            params["readonly"] = json!(true);
        }
        let made = spdk
            .call_within("vhost_create_blk_controller", Some(params), self.timeout)
            .await;
        if let Err(e) = made {
            let there = self.controllers(spdk).await?.into_iter().any(|c| {
                c["ctrlr"] == p.handle.as_str()
                    && c["backend_specific"]["block"]["bdev"] == p.bdev.as_str()
            });
            if !there {
                return Err(e);
            }
        }
        Ok(Placement {
            device: format!("vhost-blk controller {}", p.handle),
            unit: p.unit,
        })
    }

    async fn withdraw(&self, spdk: &Spdk, _domain: &str, handle: &str) -> Result<(), RpcError> {
        if self
            .controllers(spdk)
            .await?
            .iter()
            .any(|c| c["ctrlr"] == handle)
        {
            self.delete(spdk, handle).await?;
        }
        Ok(())
    }

    async fn heal(
        &self,
        spdk: &Spdk,
        desired: &[Presented],
        bdevs: &HashSet<String>,
    ) -> Result<Vec<String>, RpcError> {
        let have: HashSet<String> = self
            .controllers(spdk)
            .await?
            .iter()
            .filter_map(|c| c["ctrlr"].as_str().map(str::to_string))
            .collect();
        let mut healed = Vec::new();
        for p in desired {
            if !have.contains(&p.handle) && bdevs.contains(&p.bdev) {
                self.present(spdk, p).await?;
                healed.push(p.handle.clone());
            }
        }
        Ok(healed)
    }

    async fn tidy(&self, spdk: &Spdk, desired: &[Presented]) -> Result<Vec<String>, RpcError> {
        let keep: HashSet<&str> = desired.iter().map(|p| p.handle.as_str()).collect();
        let mut removed = Vec::new();
        for c in self.controllers(spdk).await? {
            let Some(name) = c["ctrlr"].as_str() else {
                continue;
            };
            if name.starts_with("mv-") && !keep.contains(name) {
                self.delete(spdk, name).await?;
                removed.push(name.to_string());
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdevs_belong_to_their_disk_only() {
        let h = "mv-0123-vda";
        assert!(belongs("mv-0123-vda", h));
        assert!(belongs("mv-0123-vdan1", h));
        assert!(belongs("mv-0123-vdan12", h));
        assert!(!belongs("mv-0123-vdab", h));
        assert!(!belongs("mv-0123-vdan", h));
        assert!(!belongs("mv-0123-vd", h));
    }

    #[test]
    fn listeners_follow_spdk_conventions() {
        let tcp = Listen::Fabric {
            trtype: "TCP".into(),
            addr: "192.0.2.5".into(),
            port: 4420,
        };
        assert_eq!(
            tcp.address(),
            json!({"trtype":"tcp","adrfam":"ipv4","traddr":"192.0.2.5","trsvcid":"4420"})
        );
        assert!(tcp.matches(
            &json!({"trtype":"TCP","adrfam":"IPv4","traddr":"192.0.2.5","trsvcid":"4420"})
        ));
        let vfu = Listen::VfioUser {
            path: "/run/vfu/ctrl0".into(),
        };
        assert!(vfu.address().get("adrfam").is_none());
        assert!(vfu.matches(
            &json!({"trtype":"VFIOUSER","adrfam":"unknown","traddr":"/run/vfu/ctrl0","trsvcid":"0"})
        ));
        let v6 = Listen::Fabric {
            trtype: "RDMA".into(),
            addr: "fd00::5".into(),
            port: 4420,
        };
        assert_eq!(v6.address()["adrfam"], "ipv6");
        assert_eq!(v6.address()["trtype"], "rdma");
    }
}
