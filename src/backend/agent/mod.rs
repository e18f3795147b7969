//! Controller mode: `metalvirt-agent` runs on a node's DPU, next to that DPU's SPDK and Open
//! vSwitch, and serves the node's [`Disks`] and [`Nics`] to a controller (a metalvirtd that
//! manages many nodes) over tarpc, on TCP with mutual TLS. SPDK's JSON-RPC socket and OVSDB
//! stay on the DPU's own unix sockets; what crosses the network is this service, and only to
//! a controller whose certificate chains to the agent's CA.
//!
//! - [`server`]: the agent (its backends, the listener, a task per call so a step runs to
//!   its end on the DPU even when the controller goes away mid-call).
//! - [`client`]: the controller's side, [`client::AgentLink`] (one connection per agent,
//!   kept up in the background, calls failing fast while it is down) and the
//!   [`Disks`]/[`Nics`] implementations over it.
//!
//! The service is versioned: [`AgentV1`] is protocol [`PROTOCOL_VERSION`], checked in
//! `hello` before any other call, with the node's name (a controller never drives the
//! wrong DPU). Frames are length-delimited JSON: the backend types use serde's tagged enums
//! and optional fields, which a schema-less binary format cannot carry.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use super::{
    BackendError, BlockInfo, BlockStats, BootRequest, DiskSpec, IfStats, NicSpec, PowerReading,
    Qos, Sensors,
};
use crate::secret_value::SecretValue;

/// One side's PEM files on the agent link: its certificate chain and key, and the CA roots
/// the other side's certificate must chain to.
pub(crate) struct Pems {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub roots: rustls::RootCertStore,
}

impl Pems {
    /// Reads them; errors name the configuration key (`prefix` + `cert_file`, …) and file.
    pub(crate) fn load(
        prefix: &str,
        [cert, key, ca]: [&std::path::Path; 3],
        resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    ) -> Result<Pems, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |k: &str, p: &std::path::Path| {
            let p = resolve(p);
            std::fs::read(&p).map_err(|e| format!("{prefix}{k} {}: {e}", p.display()))
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("cert_file", cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{prefix}cert_file: {e}"))?;
        if chain.is_empty() {
            return Err(format!("{prefix}cert_file holds no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&read("key_file", key)?)
            .map_err(|e| format!("{prefix}key_file: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read("ca_file", ca)?) {
            roots
                .add(c.map_err(|e| format!("{prefix}ca_file: {e}"))?)
                .map_err(|e| format!("{prefix}ca_file: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{prefix}ca_file holds no PEM certificate"));
        }
        Ok(Pems { chain, key, roots })
    }
}

/// The agent protocol's version; a controller and an agent must agree on it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts (a reply listing every handle of a busy DPU fits many
/// times over).
pub const MAX_FRAME: usize = 4 << 20;

/// A backend call's outcome, as the agent's backend gave it.
pub type Answer<T> = Result<T, BackendError>;

/// What an agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's protocol version.
    pub version: u32,
    /// The node whose DPU it runs on.
    pub node: String,
    /// Chosen at each agent start: a controller that sees it change knows the agent
    /// restarted.
    pub boot_id: String,
    /// The DPU switch bridge its NICs join.
    pub bridge: String,
    /// The host-facing NIC functions, as (function, representor).
    pub functions: Vec<(String, String)>,
}

/// A disk key on the wire: the bytes, never printed.
#[derive(Clone, Serialize, Deserialize)]
pub struct WireKey(Vec<u8>);

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireKey(<redacted>)")
    }
}

/// A disk to map, with the key its volume needs: [`DiskSpec`] leaves the key out of every
/// serialisation (the journal must never hold it), so it travels beside the spec, inside
/// the TLS session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireDisk {
    /// The disk.
    pub spec: DiskSpec,
    /// The key of its `<auth>` secret.
    pub key: Option<WireKey>,
}

impl WireDisk {
    /// The disk as the controller's driver planned it.
    pub fn of(spec: &DiskSpec) -> WireDisk {
        WireDisk {
            key: spec
                .auth
                .as_ref()
                .and_then(|a| a.key.as_ref())
                .map(|k| WireKey(k.expose().to_vec())),
            spec: spec.clone(),
        }
    }

    /// The disk for the agent's backend, key restored.
    pub fn into_spec(self) -> DiskSpec {
        let mut spec = self.spec;
        if let (Some(auth), Some(WireKey(k))) = (spec.auth.as_mut(), self.key) {
            auth.key = Some(SecretValue::new(k));
        }
        spec
    }
}

/// The agent's service, version 1: the node's disk and NIC backends, call for call.
#[tarpc::service]
pub trait AgentV1 {
    /// Who the agent is; the controller's protocol version in, the agent's out.
    async fn hello(controller_version: u32) -> Hello;
    /// Liveness.
    async fn ping() -> u64;
    /// [`super::Disks::accepts`].
    async fn disk_accepts(disk: WireDisk) -> Answer<Option<String>>;
    /// [`super::Disks::attach`].
    async fn disk_attach(disk: WireDisk) -> Answer<String>;
    /// [`super::Disks::detach`].
    async fn disk_detach(handle: String) -> Answer<()>;
    /// [`super::Disks::list`].
    async fn disk_list() -> Answer<Vec<String>>;
    /// [`super::Disks::resize`].
    async fn disk_resize(handle: String, bytes: u64) -> Answer<u64>;
    /// [`super::Disks::info`].
    async fn disk_info(handle: String) -> Answer<BlockInfo>;
    /// [`super::Disks::stats`].
    async fn disk_stats(handle: String) -> Answer<BlockStats>;
    /// [`super::Disks::set_qos`].
    async fn disk_set_qos(handle: String, qos: Qos) -> Answer<()>;
    /// [`super::Disks::tidy`].
    async fn disk_tidy() -> Answer<Vec<String>>;
    /// [`super::Nics::plug`].
    async fn nic_plug(nic: NicSpec) -> Answer<String>;
    /// [`super::Nics::unplug`].
    async fn nic_unplug(handle: String) -> Answer<()>;
    /// [`super::Nics::list`].
    async fn nic_list() -> Answer<Vec<String>>;
    /// [`super::Nics::stats`].
    async fn nic_stats(handle: String) -> Answer<IfStats>;
    /// [`super::Power::state`] of the BMC the agent drives.
    async fn power_state() -> Answer<PowerReading>;
    /// [`super::Power::on`].
    async fn power_on() -> Answer<()>;
    /// [`super::Power::off`].
    async fn power_off(hard: bool) -> Answer<()>;
    /// [`super::Power::restart`].
    async fn power_restart(hard: bool) -> Answer<()>;
    /// [`super::Power::set_boot`].
    async fn power_set_boot(req: BootRequest) -> Answer<()>;
    /// [`super::Power::sensors`].
    async fn power_sensors() -> Answer<Sensors>;
    /// Waits (up to the call's deadline, at most [`WATCH_HOLD`]) until the BMC's power
    /// event counter differs from `seen`; returns it. `Unsupported` when the BMC announces
    /// nothing (the controller polls it then).
    async fn power_watch(seen: u64) -> Answer<u64>;
}

/// Longest a `power_watch` call is held before it answers with no change.
pub const WATCH_HOLD: std::time::Duration = std::time::Duration::from_secs(25);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{DiskAuth, Volume};

    #[test]
    fn a_disk_key_crosses_beside_its_spec_and_is_never_printed() {
        let spec = DiskSpec {
            handle: "mv-x-vda".into(),
            target: "vda".into(),
            source: "rbd:pool/img".into(),
            readonly: false,
            auth: Some(DiskAuth {
                username: Some("cinder".into()),
                secret_uuid: "u".into(),
                key: Some(SecretValue::new(b"AQBx-key".to_vec())),
            }),
            serial: None,
            volume: Volume::Other,
            unit: None,
            bus: None,
            qos: None,
        };
        let wire = WireDisk::of(&spec);
        let json = serde_json::to_string(&wire).unwrap();
        assert!(!format!("{wire:?}").contains("AQBx"));
        let back: WireDisk = serde_json::from_str(&json).unwrap();
        let spec2 = back.into_spec();
        assert_eq!(
            spec2.auth.unwrap().key.unwrap().expose(),
            b"AQBx-key".as_slice()
        );
        // The spec's own serialisation (the journal's) still leaves the key out.
        assert!(!serde_json::to_string(&spec).unwrap().contains("AQBx"));
    }
}
