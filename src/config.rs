//! Daemon configuration: a strict TOML file (unknown keys are errors naming the key) plus the
//! command-line overrides. With no file at all the daemon runs the simulated lab; `[[node]]`
//! entries (the node inventory) put real servers behind the daemon instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Top-level configuration (`/etc/metalvirt/metalvirtd.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the unix sockets are created (`virtmetald-sock`, `virtmetald-sock-ro`): by
    /// default `/run/libvirt`, where libvirt's client looks for `metal:///system` (for a
    /// daemon not run by root, `$XDG_RUNTIME_DIR/libvirt`, for `metal:///session`).
    pub socket_dir: PathBuf,
    /// Persistent definitions (domains/, autostart/).
    pub config_dir: PathBuf,
    /// Live state (domains/<uuid>.json, nodes.json); must survive daemon restarts.
    pub state_dir: PathBuf,
    /// File mode of the read-write socket.
    pub rw_socket_mode: u32,
    /// File mode of the read-only socket.
    pub ro_socket_mode: u32,
    /// Outstanding calls per client (libvirtd's `max_client_requests`).
    pub max_client_requests: usize,
    /// Concurrent client connections, all sockets together (libvirtd's `max_clients`).
    pub max_clients: usize,
    /// Concurrent connections on the read-only socket. Below `max_clients`, so read-only
    /// clients (anyone, with the default socket mode) can never take the last
    /// `max_clients - max_readonly_clients` slots from read-write clients such as nova.
    pub max_readonly_clients: usize,
    /// Reply and event bytes a client may leave unread: at this many the daemon takes no
    /// further calls from it until it reads, and events beyond it disconnect it.
    pub max_client_output_bytes: usize,
    /// A client with output pending that takes no byte of it for this long is disconnected
    /// (and every socket write is limited to this long), in seconds.
    pub client_write_timeout_s: f64,
    /// Host name reported by GET_HOSTNAME (default: the system's).
    pub hostname: Option<String>,
    /// How long a call waits for another operation on the same domain before it answers
    /// `VIR_ERR_OPERATION_TIMEOUT` ("cannot acquire state change lock"), in seconds
    /// (libvirt's fixed 30 s).
    pub job_wait_timeout_s: f64,
    /// Idle time after which a client that supports keepalive is sent a PING, in
    /// milliseconds (libvirtd's `keepalive_interval`, 5 s); 0 disables server PINGs.
    pub keepalive_interval_ms: u64,
    /// Unanswered PINGs after which the client is disconnected (`keepalive_count`).
    pub keepalive_count: u32,
    /// Power watcher settings.
    pub watcher: WatcherConfig,
    /// TLS listener on when the network listeners are (libvirtd's `listen_tls`).
    pub listen_tls: bool,
    /// Plain TCP listener on when the network listeners are (`listen_tcp`); needs
    /// `auth_tcp = "none"`, as there is no SASL here.
    pub listen_tcp: bool,
    /// Address the network listeners bind (`listen_addr`; default all addresses, IPv6 and
    /// IPv4).
    pub listen_addr: Option<String>,
    /// TLS port (`tls_port`, 16514).
    pub tls_port: Port,
    /// TCP port (`tcp_port`, 16509).
    pub tcp_port: Port,
    /// Authentication on the TCP listener (`auth_tcp`): only "none" is served.
    pub auth_tcp: String,
    /// Authentication on the TLS listener besides the certificate (`auth_tls`): "none".
    pub auth_tls: String,
    /// The server's private key (`key_file`).
    pub key_file: PathBuf,
    /// The server's certificate, with intermediates after it (`cert_file`).
    pub cert_file: PathBuf,
    /// CA certificate(s) client certificates must chain to (`ca_file`).
    pub ca_file: PathBuf,
    /// Revoked client certificates (`crl_file`, PEM).
    pub crl_file: Option<PathBuf>,
    /// Client certificate Distinguished Names allowed (`tls_allowed_dn_list`, fnmatch
    /// patterns such as `"C=GB,O=Example,CN=*"`). Empty: any certificate from the CA.
    pub tls_allowed_dn_list: Vec<String>,
    /// Client DNs that get a read-only connection (every mutating call refused with
    /// `VIR_ERR_OPERATION_DENIED`), whether or not they also match the allowed list.
    pub tls_readonly_dn_list: Vec<String>,
    /// Network connections not yet authenticated (TLS handshake in progress) at once
    /// (libvirtd's `max_anonymous_clients`).
    pub max_anonymous_clients: usize,
    /// The network listeners are on (the `--listen` option, as libvirtd's).
    #[serde(skip)]
    pub listen: bool,
    /// The simulated lab (its node count applies only when there is no `[[node]]`).
    pub sim: SimConfig,
    /// Whether the simulated lab runs when there is no `[[node]]`: with no configuration file,
    /// or a file with a `[sim]` section. A file with neither serves no nodes.
    #[serde(skip)]
    pub sim_lab: bool,
    /// Whether `socket_dir` was configured (or given on the command line).
    #[serde(skip)]
    pub socket_dir_set: bool,
    /// The node inventory: one entry per bare-metal server.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// Directory of the configuration file; relative paths in it are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One bare-metal server (`[[node]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name (what `<metalvirt:node>` pins and dumpxml shows).
    pub name: String,
    /// CPU sockets.
    #[serde(default = "one")]
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    #[serde(default = "one")]
    pub threads: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// CPU frequency in MHz.
    #[serde(default = "default_mhz")]
    pub mhz: u32,
    /// Architecture.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// CPU model name.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// The BMC.
    pub bmc: BmcConfig,
    /// NIC plumbing on the node's DPU (absent: the simulated lab's).
    #[serde(default)]
    pub nics: Option<NicsConfig>,
    /// Disk mapping by the node's DPU (absent: the simulated lab's).
    #[serde(default)]
    pub disks: Option<DisksConfig>,
    /// The node's DPU runs `metalvirt-agent`: its disks and NICs are reached through it
    /// (then `[node.disks]` and `[node.nics]` belong in the agent's configuration).
    #[serde(default)]
    pub agent: Option<AgentLinkConfig>,
}

/// How a controller reaches a node's `metalvirt-agent` (`[node.agent]`): mutual TLS, the
/// agent's certificate checked against `ca_file` and the name it is reached by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLinkConfig {
    /// `host:port` (`dpu-07:16600`, `[fd00::7]:16600`).
    pub address: String,
    /// The name the agent's certificate must carry (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The controller's client certificate (with intermediates after it).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// CA certificate(s) the agent's certificate must chain to.
    pub ca_file: PathBuf,
    /// Time limit of one call through the agent, in seconds (the agent's own backend time
    /// limits apply inside it).
    #[serde(default = "default_agent_call_timeout")]
    pub timeout_s: f64,
    /// Time limit of connecting (TCP and TLS), in seconds: calls to an agent that is down
    /// fail within it.
    #[serde(default = "default_agent_connect_timeout")]
    pub connect_timeout_s: f64,
}

fn default_agent_call_timeout() -> f64 {
    120.0
}

fn default_agent_connect_timeout() -> f64 {
    2.0
}

impl AgentLinkConfig {
    fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.timeout_s) || !positive(self.connect_timeout_s) {
            return Err("agent.timeout_s and agent.connect_timeout_s must be positive".into());
        }
        split_host_port(&self.address)
            .map(|_| ())
            .map_err(|e| format!("agent.address: {e}"))
    }

    /// The name the agent's certificate must carry.
    pub fn server_name(&self) -> String {
        match &self.server_name {
            Some(n) => n.clone(),
            None => split_host_port(&self.address)
                .map(|(h, _)| h.to_string())
                .unwrap_or_default(),
        }
    }
}

/// `host:port` or `[v6]:port` split; the host without brackets.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("'{addr}' is not [address]:port"))?;
        (h, p)
    } else {
        addr.rsplit_once(':')
            .filter(|(h, _)| !h.contains(':'))
            .ok_or_else(|| format!("'{addr}' is not host:port"))?
    };
    if host.is_empty() {
        return Err(format!("'{addr}' names no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("'{addr}': port '{port}' is not a number from 1 to 65535"))?;
    Ok((host, port))
}

/// `metalvirt-agent`'s configuration (`/etc/metalvirt/metalvirt-agent.toml`): the one node
/// whose DPU it runs on, its disk and NIC backends (as a node's `[node.disks]` and
/// `[node.nics]`), and the mutual-TLS listener controllers call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The node's name; the controller checks it is talking to the node it configured.
    pub node: String,
    /// `address:port` to listen on (default all addresses, port 16600).
    #[serde(default = "default_agent_listen")]
    pub listen: String,
    /// The agent's certificate (with intermediates after it).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// CA certificate(s) a controller's client certificate must chain to.
    pub ca_file: PathBuf,
    /// Where the simulated lab keeps its state, for parts left simulated.
    #[serde(default = "default_agent_state_dir")]
    pub state_dir: PathBuf,
    /// Disk mapping (absent: the simulated lab's).
    #[serde(default)]
    pub disks: Option<DisksConfig>,
    /// NIC plumbing (absent: the simulated lab's).
    #[serde(default)]
    pub nics: Option<NicsConfig>,
    /// The simulated lab's settings (latencies, failures), for the parts left simulated.
    #[serde(default)]
    pub sim: SimConfig,
    /// The node's BMC, when the agent drives it (a controller's `bmc.driver = "agent"`);
    /// an OpenBMC's power changes are relayed to the controller as they happen.
    #[serde(default)]
    pub bmc: Option<BmcConfig>,
    /// Directory of the configuration file; relative paths in it are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_agent_listen() -> String {
    "[::]:16600".into()
}

fn default_agent_state_dir() -> PathBuf {
    "/var/lib/metalvirt-agent".into()
}

impl AgentConfig {
    /// Loads and checks a file.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut c: AgentConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        c.validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.node;
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!(
                "node name '{n}' must be non-empty, without spaces or '/'"
            ));
        }
        split_host_port(&self.listen).map_err(|e| format!("listen: {e}"))?;
        if let Some(nics) = &self.nics {
            nics.validate()?;
        }
        if let Some(disks) = &self.disks {
            disks.validate()?;
        }
        if let Some(b) = &self.bmc {
            if b.driver == BmcDriver::Agent {
                return Err("[bmc] driver = \"agent\" is the controller's; here name the BMC itself (openbmc, redfish, ipmi, sim)".into());
            }
            b.validate(false)?;
        }
        Ok(())
    }

    /// A path from the configuration file, relative ones taken from its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Disk mapping drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisksDriver {
    /// SPDK on the DPU, over its JSON-RPC socket.
    Spdk,
    /// The simulated lab's.
    Sim,
}

/// How the DPU presents disks to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFrontend {
    /// An NVMe-oF subsystem per domain (TCP or RDMA) the host connects to.
    Nvmf,
    /// An emulated NVMe controller over vfio-user (a subsystem per domain on the
    /// VFIOUSER transport).
    VfioUser,
    /// A vhost-blk controller per disk.
    VhostBlk,
}

/// The SPDK of a node's DPU and how it presents disks (`[node.disks]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisksConfig {
    /// Driver.
    #[serde(default = "default_disks_driver")]
    pub driver: DisksDriver,
    /// SPDK's JSON-RPC unix socket (`spdk_tgt -r`).
    #[serde(default)]
    pub spdk: Option<String>,
    /// Frontend.
    #[serde(default = "default_frontend")]
    pub frontend: DiskFrontend,
    /// nvmf: where the host connects, `tcp:<addr>:<port>` or `rdma:<addr>:<port>`
    /// (IPv6 in brackets); vfio-user: the emulated controller's socket directory.
    #[serde(default)]
    pub listen: Option<String>,
    /// nvmf: the NVMe host NQN of the server's own initiator (its `/etc/nvme/hostnqn`), the
    /// only host the per-domain subsystem admits. Required with a fabric listener: a
    /// subsystem that admits any host hands the server's disks to anyone on the fabric.
    #[serde(default)]
    pub host_nqn: Option<String>,
    /// Prefix of the per-domain subsystem NQNs (`<prefix>:mv-<domain>`).
    #[serde(default = "default_nqn_prefix")]
    pub nqn_prefix: String,
    /// iSCSI initiator IQN of the DPU (default `iqn.2026-11.io.metalvirt:<node>`).
    #[serde(default)]
    pub initiator_iqn: Option<String>,
    /// Block size of RBD bdevs.
    #[serde(default = "default_rbd_block_size")]
    pub rbd_block_size: u32,
    /// Time limit of ordinary SPDK calls (and of connecting), in seconds.
    #[serde(default = "default_spdk_timeout")]
    pub timeout_s: f64,
    /// Time limit of calls that connect volumes or change namespaces (tens of seconds on
    /// a sick target), in seconds.
    #[serde(default = "default_attach_timeout")]
    pub attach_timeout_s: f64,
    /// How long a resize waits for SPDK to see a volume grown on its target, in seconds.
    #[serde(default = "default_resize_wait")]
    pub resize_wait_s: f64,
    /// How often presentations SPDK dropped are looked for, in seconds.
    #[serde(default = "default_heal_interval")]
    pub heal_interval_s: f64,
}

fn default_disks_driver() -> DisksDriver {
    DisksDriver::Spdk
}
fn default_frontend() -> DiskFrontend {
    DiskFrontend::Nvmf
}
fn default_nqn_prefix() -> String {
    "nqn.2026-11.io.metalvirt".into()
}
fn default_rbd_block_size() -> u32 {
    512
}
fn default_spdk_timeout() -> f64 {
    10.0
}
fn default_attach_timeout() -> f64 {
    60.0
}
fn default_resize_wait() -> f64 {
    10.0
}
fn default_heal_interval() -> f64 {
    2.0
}

impl DisksConfig {
    /// nvmf's listener: (trtype, address, port).
    pub fn fabric_listener(&self) -> Result<(String, String, u16), String> {
        let l = self.listen.as_deref().unwrap_or("");
        let (trtype, rest) = l
            .split_once(':')
            .filter(|(t, _)| matches!(*t, "tcp" | "rdma"))
            .ok_or_else(|| {
                format!("disks.listen '{l}' must be tcp:<addr>:<port> or rdma:<addr>:<port>")
            })?;
        let (addr, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("disks.listen '{l}' has no port"))?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        if addr.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "disks.listen '{l}': '{addr}' is not an IP address (SPDK listens on addresses)"
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("disks.listen '{l}': bad port"))?;
        Ok((trtype.to_ascii_uppercase(), addr.to_string(), port))
    }

    fn validate(&self) -> Result<(), String> {
        if self.driver == DisksDriver::Sim {
            return Ok(());
        }
        if self.spdk.as_deref().is_none_or(str::is_empty) {
            return Err("disks.spdk (SPDK's RPC socket path) is required".into());
        }
        match self.frontend {
            DiskFrontend::Nvmf => {
                self.fabric_listener()?;
                let h = self.host_nqn.as_deref().unwrap_or("");
                if h.is_empty() {
                    return Err("disks.host_nqn is required with frontend = \"nvmf\": the per-domain subsystem admits only the server's own NVMe host NQN".into());
                }
                if !h.starts_with("nqn.") || h.len() > 223 {
                    return Err(format!(
                        "disks.host_nqn '{h}' is not an NVMe qualified name (nqn.…, at most 223 bytes)"
                    ));
                }
            }
            DiskFrontend::VfioUser => {
                if !self.listen.as_deref().is_some_and(|l| l.starts_with('/')) {
                    return Err(
                        "disks.listen of the vfio-user frontend must be the emulated controller's socket directory (an absolute path)".into(),
                    );
                }
            }
            DiskFrontend::VhostBlk => {}
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if ![
            self.timeout_s,
            self.attach_timeout_s,
            self.resize_wait_s,
            self.heal_interval_s,
        ]
        .into_iter()
        .all(positive)
        {
            return Err("disks timeouts and intervals must be positive numbers of seconds".into());
        }
        if !self.nqn_prefix.starts_with("nqn.") || self.nqn_prefix.len() > 180 {
            return Err(format!(
                "disks.nqn_prefix '{}' must be an NQN prefix like nqn.2026-11.com.example",
                self.nqn_prefix
            ));
        }
        if !matches!(self.rbd_block_size, 512 | 4096) {
            return Err("disks.rbd_block_size must be 512 or 4096".into());
        }
        Ok(())
    }
}

/// What a NIC plug waits for before it is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicWait {
    /// The OVSDB commit only.
    None,
    /// ovs-vswitchd assigned the port an OpenFlow port number.
    Ofport,
    /// ovn-controller set `external_ids:ovn-installed=true` on the interface.
    OvnInstalled,
}

/// NIC plumbing drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicsDriver {
    /// Representors plugged into the DPU's Open vSwitch over OVSDB.
    Ovs,
    /// The simulated lab's.
    Sim,
}

/// A node's pool of host-facing NIC functions and the OVSDB of its DPU (`[node.nics]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicsConfig {
    /// Driver.
    #[serde(default = "default_nics_driver")]
    pub driver: NicsDriver,
    /// The DPU's OVSDB: `unix:/var/run/openvswitch/db.sock`, `ssl:192.0.2.10:6640` (with
    /// `ssl_key`, `ssl_cert`, `ssl_ca`) or, unauthenticated, `tcp:192.0.2.10:6640`.
    #[serde(default)]
    pub ovsdb: Option<String>,
    /// `ssl:`: our private key (PEM), relative to the configuration file.
    #[serde(default)]
    pub ssl_key: Option<PathBuf>,
    /// `ssl:`: our certificate (PEM), signed by a CA ovsdb-server trusts.
    #[serde(default)]
    pub ssl_cert: Option<PathBuf>,
    /// `ssl:`: the CA certificate(s) ovsdb-server's certificate must chain to; its
    /// certificate must also name the address's host.
    #[serde(default)]
    pub ssl_ca: Option<PathBuf>,
    /// Bridge for interfaces that name none (`type='ethernet'`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Representor names in the order they are handed out; `pf0vf{0..15}` expands.
    #[serde(default)]
    pub representors: Vec<String>,
    /// The host-facing function of each representor, same order (default: its name), as
    /// the MAC programming step names it.
    #[serde(default)]
    pub functions: Vec<String>,
    /// OVS Interface type of the representors ("" = a system netdev, the DPU's case).
    #[serde(default)]
    pub interface_type: String,
    /// What a plug waits for.
    #[serde(default = "default_wait")]
    pub wait: NicWait,
    /// How long a plug waits for it, in seconds.
    #[serde(default = "default_plug_timeout")]
    pub plug_timeout_s: f64,
    /// Time limit of one OVSDB call (and of connecting), in seconds.
    #[serde(default = "default_ovsdb_timeout")]
    pub timeout_s: f64,
    /// MAC programming command, as argv (no shell): `{mac}`, `{function}`, `{representor}`
    /// and `{node}` are replaced. Runs before the port is added.
    #[serde(default)]
    pub mac_command: Option<Vec<String>>,
    /// MAC programming by writing the MAC to this file (same placeholders), e.g. a
    /// `smart_nic/vfN/mac` sysfs attribute.
    #[serde(default)]
    pub mac_sysfs: Option<String>,
}

fn default_nics_driver() -> NicsDriver {
    NicsDriver::Ovs
}
fn default_bridge() -> String {
    "br-int".into()
}
fn default_wait() -> NicWait {
    NicWait::Ofport
}
fn default_plug_timeout() -> f64 {
    30.0
}
fn default_ovsdb_timeout() -> f64 {
    10.0
}

impl NicsConfig {
    /// The pool: (function, representor) pairs, patterns expanded.
    pub fn pool(&self) -> Result<Vec<(String, String)>, String> {
        let expand = |v: &[String]| -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            for p in v {
                out.extend(expand_pattern(p)?);
            }
            Ok(out)
        };
        let reps = expand(&self.representors)?;
        let funcs = expand(&self.functions)?;
        if !funcs.is_empty() && funcs.len() != reps.len() {
            return Err(format!(
                "nics.functions names {} functions for {} representors",
                funcs.len(),
                reps.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = reps.iter().find(|r| !seen.insert(r.as_str())) {
            return Err(format!("nics.representors lists '{d}' twice"));
        }
        Ok(reps
            .iter()
            .enumerate()
            .map(|(i, r)| (funcs.get(i).unwrap_or(r).clone(), r.clone()))
            .collect())
    }

    fn validate(&self) -> Result<(), String> {
        if self.driver == NicsDriver::Sim {
            return Ok(());
        }
        let tls = [&self.ssl_key, &self.ssl_cert, &self.ssl_ca];
        match self.ovsdb.as_deref() {
            Some(a) if a.starts_with("ssl:") => {
                if tls.iter().any(|p| p.is_none()) {
                    return Err(format!(
                        "nics.ovsdb '{a}' needs nics.ssl_key, nics.ssl_cert and nics.ssl_ca"
                    ));
                }
            }
            Some(a) if a.starts_with("unix:") || a.starts_with("tcp:") => {
                if tls.iter().any(|p| p.is_some()) {
                    return Err(
                        "nics.ssl_key, ssl_cert and ssl_ca apply to an ssl: address only".into(),
                    );
                }
            }
            Some(a) => {
                return Err(format!(
                    "nics.ovsdb '{a}' must be unix:/path, ssl:host:port or tcp:host:port"
                ))
            }
            None => return Err("nics.ovsdb is required".into()),
        }
        let pool = self.pool()?;
        if pool.is_empty() {
            return Err("nics.representors is empty: the node has no NIC functions".into());
        }
        if let Some(r) = pool
            .iter()
            .find(|(_, r)| r.is_empty() || r.len() > 15 || r.contains(['/', ' ']))
        {
            return Err(format!(
                "nics.representors: '{}' is not a network device name",
                r.1
            ));
        }
        if self.bridge.is_empty() {
            return Err("nics.bridge must not be empty".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.plug_timeout_s) || !positive(self.timeout_s) {
            return Err("nics timeouts must be positive numbers of seconds".into());
        }
        if self.mac_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("nics.mac_command must name a program".into());
        }
        Ok(())
    }
}

/// BMC drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    /// DMTF Redfish over HTTP(S).
    Redfish,
    /// IPMI 2.0 lanplus (RMCP+), through ipmitool.
    Ipmi,
    /// OpenBMC over D-Bus (phosphor-state-manager and the boot settings), for a metalvirtd
    /// with access to the BMC's bus; power changes arrive as signals.
    Openbmc,
    /// The BMC the node's metalvirt-agent drives (its `[bmc]`), with the power changes it
    /// relays; needs `[node.agent]`.
    Agent,
    /// The simulated lab's BMC.
    Sim,
}

/// How to reach and drive one BMC (`[node.bmc]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcConfig {
    /// Driver.
    pub driver: BmcDriver,
    /// Redfish: base URL (`https://10.0.0.5`, `http://127.0.0.1:8000`). IPMI: host or
    /// host:port (default port 623).
    #[serde(default)]
    pub address: Option<String>,
    /// Redfish: the ComputerSystem, as its path, Id, UUID or Name; may be left out when the
    /// BMC has exactly one.
    #[serde(default)]
    pub system: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line); relative to the configuration file. Never the
    /// password itself.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Redfish over HTTPS: PEM bundle of the CAs to trust instead of the system's.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Redfish over HTTPS: accept any certificate (warned about at start-up).
    #[serde(default)]
    pub insecure: bool,
    /// Redfish: allow a plain `http://` address, where the credentials cross the network in
    /// clear (emulators and labs; warned about at start-up).
    #[serde(default)]
    pub insecure_http: bool,
    /// Time limit of one BMC call, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries of a call that met a transient failure (connection error, 5xx, UDP loss).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Calls in flight to this BMC at most (default: Redfish 4, IPMI 1).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// IPMI cipher suite (`ipmitool -C`).
    #[serde(default = "default_cipher")]
    pub cipher_suite: u8,
    /// IPMI: the ipmitool binary.
    #[serde(default)]
    pub ipmitool: Option<PathBuf>,
    /// How long a start waits for the BMC to report On, in seconds.
    #[serde(default = "default_on_timeout")]
    pub power_on_timeout_s: f64,
    /// How long a destroy waits for the BMC to report Off, in seconds.
    #[serde(default = "default_off_timeout")]
    pub power_off_timeout_s: f64,
    /// Boot overrides apply to every boot, as a VM's boot order does (false: next boot only).
    #[serde(default = "yes")]
    pub boot_persistent: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_mhz() -> u32 {
    2400
}
fn default_arch() -> String {
    "x86_64".into()
}
fn default_timeout() -> f64 {
    60.0
}
fn default_retries() -> u32 {
    3
}
fn default_cipher() -> u8 {
    3
}
fn default_on_timeout() -> f64 {
    300.0
}
fn default_off_timeout() -> f64 {
    120.0
}

/// The power watcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatcherConfig {
    /// Poll interval per bound node, in milliseconds (jittered by up to a tenth).
    pub interval_ms: u64,
    /// BMC queries in flight at once, over all nodes.
    pub max_concurrency: usize,
    /// Longest pause between queries of a BMC that keeps failing, in milliseconds.
    pub max_backoff_ms: u64,
}

/// The built-in simulated lab (used when no real nodes are configured).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Number of simulated nodes.
    pub nodes: usize,
    /// Sockets per node.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Memory per node in MiB.
    pub memory_mib: u64,
    /// Latency of a BMC power call, in milliseconds.
    pub power_latency_ms: u64,
    /// Time a graceful shutdown takes before the server reads as off, in milliseconds.
    pub graceful_shutdown_ms: u64,
    /// Latency of mapping or unmapping one disk, in milliseconds.
    pub disk_latency_ms: u64,
    /// Latency of plugging or unplugging one NIC, in milliseconds.
    pub nic_latency_ms: u64,
    /// Injected failures: mapping a disk whose source contains one of these strings fails.
    pub fail_disk_sources: Vec<String>,
    /// Injected failures: plugging a NIC whose MAC is listed fails.
    pub fail_nic_macs: Vec<String>,
    /// Injected failures: powering on one of these nodes fails.
    pub fail_power_on_nodes: Vec<String>,
    /// Injected failures: the BMC of these nodes never answers a power-on request.
    pub hang_power_on_nodes: Vec<String>,
    /// Injected failures: unmapping a disk whose source contains one of these strings fails.
    pub fail_unmap_sources: Vec<String>,
    /// Injected failures: unplugging a NIC whose MAC is listed fails.
    pub fail_unplug_macs: Vec<String>,
    /// Size of a simulated cloud volume before anyone resizes it, in GiB.
    pub volume_gib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket_dir: PathBuf::from(SYSTEM_SOCKET_DIR),
            config_dir: PathBuf::from("/etc/metalvirt"),
            state_dir: PathBuf::from("/var/lib/metalvirt"),
            rw_socket_mode: 0o700,
            ro_socket_mode: 0o777,
            max_client_requests: 16,
            max_clients: 5000,
            max_readonly_clients: 1000,
            max_client_output_bytes: 4 * 1024 * 1024,
            client_write_timeout_s: 30.0,
            job_wait_timeout_s: 30.0,
            hostname: None,
            keepalive_interval_ms: 5000,
            keepalive_count: 5,
            watcher: WatcherConfig::default(),
            listen_tls: true,
            listen_tcp: false,
            listen_addr: None,
            tls_port: Port(16514),
            tcp_port: Port(16509),
            auth_tcp: "sasl".into(),
            auth_tls: "none".into(),
            key_file: PathBuf::from("/etc/pki/libvirt/private/serverkey.pem"),
            cert_file: PathBuf::from("/etc/pki/libvirt/servercert.pem"),
            ca_file: PathBuf::from("/etc/pki/CA/cacert.pem"),
            crl_file: None,
            tls_allowed_dn_list: Vec::new(),
            tls_readonly_dn_list: Vec::new(),
            max_anonymous_clients: 20,
            listen: false,
            sim: SimConfig::default(),
            sim_lab: true,
            socket_dir_set: false,
            nodes: Vec::new(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            interval_ms: 5000,
            max_concurrency: 32,
            max_backoff_ms: 60_000,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 4,
            sockets: 2,
            cores: 16,
            threads: 2,
            memory_mib: 256 * 1024,
            power_latency_ms: 200,
            graceful_shutdown_ms: 1000,
            disk_latency_ms: 20,
            nic_latency_ms: 5,
            fail_disk_sources: Vec::new(),
            fail_nic_macs: Vec::new(),
            fail_power_on_nodes: Vec::new(),
            hang_power_on_nodes: Vec::new(),
            fail_unmap_sources: Vec::new(),
            fail_unplug_macs: Vec::new(),
            volume_gib: 20,
        }
    }
}

/// Where the packaged configuration lives; read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "/etc/metalvirt/metalvirtd.toml";
/// The system daemon's socket directory (libvirt's for `metal:///system`).
pub const SYSTEM_SOCKET_DIR: &str = "/run/libvirt";

/// The user's runtime directory: `$XDG_RUNTIME_DIR`, else `~/.cache` (libvirt's choice).
fn user_runtime_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))
}

/// A TCP port: a number, or a string holding one (libvirtd.conf writes `tls_port = "16514"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        let bad = |v: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!("'{v}' is not a port number (1-65535)"))
        };
        let n = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => s.trim().parse::<i64>().map_err(|_| bad(&s))?,
        };
        match u16::try_from(n) {
            Ok(p) if p > 0 => Ok(Port(p)),
            _ => Err(bad(&n)),
        }
    }
}

impl Config {
    /// Parses a TOML document strictly.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        // Parsed into the structure for its errors (they name line, column and key), then
        // as a table for which keys the file sets.
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        c.sim_lab = table.contains_key("sim");
        c.socket_dir_set = table.contains_key("socket_dir");
        c.validate()?;
        Ok(c)
    }

    /// Defaults that depend on who runs the daemon: for a user other than root, the socket
    /// directory (unless configured) is the runtime directory's `libvirt/`, as for libvirt's
    /// session daemons, so `metal:///session` finds it.
    pub fn apply_user_defaults(&mut self, uid: u32) {
        if uid == 0 || self.socket_dir_set {
            return;
        }
        if let Some(d) = user_runtime_dir() {
            self.socket_dir = d.join("libvirt");
        }
    }

    /// Loads a file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut c = Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(c)
    }

    /// A path from the configuration file, relative ones taken from its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_client_requests == 0 {
            return Err("max_client_requests must be at least 1".into());
        }
        if self.max_clients == 0 {
            return Err("max_clients must be at least 1".into());
        }
        if self.max_readonly_clients >= self.max_clients {
            return Err(format!(
                "max_readonly_clients ({}) must be below max_clients ({}), so read-write clients always have a slot",
                self.max_readonly_clients, self.max_clients
            ));
        }
        if self.max_client_output_bytes < 64 * 1024 {
            return Err("max_client_output_bytes must be at least 65536".into());
        }
        if !(self.client_write_timeout_s > 0.0 && self.client_write_timeout_s <= 3600.0) {
            return Err("client_write_timeout_s must be above 0 and at most 3600".into());
        }
        if !(self.job_wait_timeout_s > 0.0 && self.job_wait_timeout_s <= 3600.0) {
            return Err("job_wait_timeout_s must be above 0 and at most 3600".into());
        }
        if !matches!(self.auth_tcp.as_str(), "none" | "sasl") {
            return Err(format!(
                "auth_tcp '{}' is unknown: \"none\" or \"sasl\" (libvirtd's default; not served here)",
                self.auth_tcp
            ));
        }
        if self.listen_tcp && self.auth_tcp != "none" {
            return Err(format!(
                "listen_tcp = true needs auth_tcp = \"none\": metalvirtd has no SASL (auth_tcp is \"{}\"), and plain TCP is unauthenticated and unencrypted; use TLS (listen_tls) instead",
                self.auth_tcp
            ));
        }
        if self.auth_tls != "none" {
            return Err(format!(
                "auth_tls '{}' is not supported: TLS clients are authenticated by their certificate (auth_tls = \"none\")",
                self.auth_tls
            ));
        }
        if self.max_anonymous_clients == 0 {
            return Err("max_anonymous_clients must be at least 1".into());
        }
        if matches!(&self.listen_addr, Some(a) if a.trim().is_empty()) {
            return Err(
                "listen_addr must not be empty (leave it out to listen on all addresses)".into(),
            );
        }
        for (key, list) in [
            ("tls_allowed_dn_list", &self.tls_allowed_dn_list),
            ("tls_readonly_dn_list", &self.tls_readonly_dn_list),
        ] {
            if list.iter().any(|p| p.trim().is_empty()) {
                return Err(format!("{key} has an empty pattern"));
            }
        }
        if self.watcher.interval_ms == 0 {
            return Err("watcher.interval_ms must be at least 1".into());
        }
        if self.watcher.max_concurrency == 0 {
            return Err("watcher.max_concurrency must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        // Each DPU runs its own SPDK: two nodes naming one socket would tidy each other's.
        let mut sockets: std::collections::HashMap<&str, &str> = Default::default();
        for n in &self.nodes {
            let spdk = n.disks.as_ref().filter(|d| d.driver == DisksDriver::Spdk);
            if let Some(sock) = spdk.and_then(|d| d.spdk.as_deref()) {
                if let Some(other) = sockets.insert(sock, &n.name) {
                    return Err(format!(
                        "nodes '{other}' and '{}' both name SPDK socket {sock}: each DPU has its own SPDK",
                        n.name
                    ));
                }
            }
        }
        // Nodes sharing one OVSDB must not share representors.
        let mut reps: std::collections::HashMap<(String, String), &str> = Default::default();
        for n in &self.nodes {
            n.validate()?;
            if !names.insert(n.name.as_str()) {
                return Err(format!("node '{}' is listed twice", n.name));
            }
            let Some(nics) = n.nics.as_ref().filter(|x| x.driver == NicsDriver::Ovs) else {
                continue;
            };
            for (_, r) in nics.pool()? {
                let key = (nics.ovsdb.clone().unwrap_or_default(), r);
                if let Some(other) = reps.insert(key.clone(), &n.name) {
                    return Err(format!(
                        "nodes '{other}' and '{}' both list representor '{}' on OVSDB {}",
                        n.name, key.1, key.0
                    ));
                }
            }
        }
        let s = &self.sim;
        if s.sockets == 0 || s.cores == 0 || s.threads == 0 || s.memory_mib == 0 {
            return Err("sim: sockets, cores, threads and memory_mib must be positive".into());
        }
        Ok(())
    }

    /// How long an operation waits for the one holding its domain's job.
    pub fn job_wait(&self) -> Duration {
        Duration::from_secs_f64(self.job_wait_timeout_s)
    }

    /// How long a client may leave pending output untaken.
    pub fn client_write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.client_write_timeout_s)
    }

    /// The watcher's longest backoff.
    pub fn watch_max_backoff(&self) -> Duration {
        Duration::from_millis(self.watcher.max_backoff_ms.max(self.watcher.interval_ms))
    }

    /// The watcher's poll interval.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watcher.interval_ms)
    }
}

impl BmcConfig {
    /// Per-call time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    /// Checks a BMC's settings (a node's `[node.bmc]`, whose node has an agent when
    /// `has_agent`, or an agent's `[bmc]`); errors name the key, not the node.
    fn validate(&self, has_agent: bool) -> Result<(), String> {
        let b = self;
        let e = |m: &str| Err(m.to_string());
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(b.timeout_s)
            || !positive(b.power_on_timeout_s)
            || !positive(b.power_off_timeout_s)
        {
            return e("bmc timeouts must be positive numbers of seconds");
        }
        if b.max_concurrency == Some(0) {
            return e("bmc.max_concurrency must be at least 1");
        }
        if b.driver == BmcDriver::Sim {
            return Ok(());
        }
        if b.driver == BmcDriver::Agent {
            if !has_agent {
                return e("bmc.driver = \"agent\" needs [node.agent]: the agent drives the BMC");
            }
            if b.address.is_some() || b.username.is_some() || b.password_file.is_some() {
                return e("bmc.address, bmc.username and bmc.password_file belong in the agent's [bmc] when bmc.driver = \"agent\"");
            }
            return Ok(());
        }
        if b.driver == BmcDriver::Openbmc {
            // The BMC's D-Bus; its policy, not a password, decides who may call.
            if b.username.is_some() || b.password_file.is_some() {
                return e("bmc.username and bmc.password_file do not apply to an OpenBMC reached over D-Bus (the bus policy decides who may call)");
            }
            if b.insecure || b.ca_bundle.is_some() || b.insecure_http {
                return e(
                    "bmc.insecure, bmc.insecure_http and bmc.ca_bundle apply to Redfish only",
                );
            }
            if let Some(a) = b.address.as_deref() {
                if !a.contains(':') || !a.contains('=') {
                    return e("bmc.address of an OpenBMC is a D-Bus address such as \"unix:path=/run/dbus/system_bus_socket\" (leave it out for the system bus)");
                }
            }
            return Ok(());
        }
        let Some(addr) = b.address.as_deref().filter(|a| !a.is_empty()) else {
            return e("bmc.address is required");
        };
        if b.username.as_deref().unwrap_or("").is_empty() {
            return e("bmc.username is required");
        }
        if b.password_file.is_none() {
            return e("bmc.password_file is required (the password is never written inline)");
        }
        match b.driver {
            BmcDriver::Redfish => {
                if !(addr.starts_with("https://") || addr.starts_with("http://")) {
                    return e("bmc.address of a Redfish BMC must be an http:// or https:// URL");
                }
                if addr.starts_with("http://") && !b.insecure_http {
                    return e("bmc.address is plain http://, which sends the BMC credentials in clear; use https:// or set bmc.insecure_http = true (emulators and labs only)");
                }
                if b.insecure && b.ca_bundle.is_some() {
                    return e("bmc.insecure and bmc.ca_bundle exclude each other");
                }
            }
            BmcDriver::Ipmi => {
                if addr.contains("://") {
                    return e("bmc.address of an IPMI BMC is a host or host:port, not a URL");
                }
                if b.cipher_suite > 17 {
                    return e("bmc.cipher_suite must be 0..=17");
                }
                if b.insecure || b.ca_bundle.is_some() || b.insecure_http {
                    return e(
                        "bmc.insecure, bmc.insecure_http and bmc.ca_bundle apply to Redfish only",
                    );
                }
            }
            BmcDriver::Sim | BmcDriver::Openbmc | BmcDriver::Agent => {}
        }
        Ok(())
    }
}

impl NodeConfig {
    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let e = |m: &str| Err(format!("node '{n}': {m}"));
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!(
                "node name '{n}' must be non-empty, without spaces or '/'"
            ));
        }
        if self.sockets == 0 || self.cores == 0 || self.threads == 0 || self.memory_mib == 0 {
            return e("sockets, cores, threads and memory_mib must be positive");
        }
        self.bmc
            .validate(self.agent.is_some())
            .map_err(|m| format!("node '{n}': {m}"))?;
        if let Some(nics) = &self.nics {
            nics.validate().map_err(|m| format!("node '{n}': {m}"))?;
        }
        if let Some(disks) = &self.disks {
            disks.validate().map_err(|m| format!("node '{n}': {m}"))?;
        }
        if let Some(agent) = &self.agent {
            agent.validate().map_err(|m| format!("node '{n}': {m}"))?;
            if self.disks.is_some() || self.nics.is_some() {
                return e("[node.disks] and [node.nics] cannot be given with [node.agent]: the agent's own configuration names the DPU's SPDK and Open vSwitch");
            }
        }
        Ok(())
    }
}

/// Expands a representor pattern: `pf0vf{0..15}` gives `pf0vf0` … `pf0vf15`; a name without
/// braces is itself.
pub fn expand_pattern(pattern: &str) -> Result<Vec<String>, String> {
    let Some((head, rest)) = pattern.split_once('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let bad = || format!("bad range in '{pattern}' (expected e.g. pf0vf{{0..15}})");
    let (range, tail) = rest.split_once('}').ok_or_else(bad)?;
    let (a, b) = range.split_once("..").ok_or_else(bad)?;
    let (a, b): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b || b - a >= 4096 || tail.contains('{') {
        return Err(bad());
    }
    Ok((a..=b).map(|i| format!("{head}{i}{tail}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("socket_dir = '/x'\nbogus_key = 1\n").unwrap_err();
        assert!(e.contains("bogus_key"), "{e}");
        let e = Config::from_toml("[sim]\nnodez = 3\n").unwrap_err();
        assert!(e.contains("nodez"), "{e}");
    }

    #[test]
    fn values_are_read_and_defaults_kept() {
        let c = Config::from_toml("[sim]\nnodes = 7\npower_latency_ms = 0\n").unwrap();
        assert_eq!(c.sim.nodes, 7);
        assert_eq!(c.sim.power_latency_ms, 0);
        assert_eq!(c.sim.cores, 16);
        assert!(Config::from_toml("max_client_requests = 0").is_err());
    }

    #[test]
    fn agent_links_openbmc_and_agent_configurations_are_checked() {
        let good = r#"
[[node]]
name = "bm-1"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "agent"
[node.agent]
address = "dpu-07:16600"
cert_file = "c.pem"
key_file = "k.pem"
ca_file = "ca.pem"

[[node]]
name = "bm-2"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "openbmc"
address = "unix:path=/run/dbus/system_bus_socket"
"#;
        let c = Config::from_toml(good).unwrap();
        let a = c.nodes[0].agent.as_ref().unwrap();
        assert_eq!(a.server_name(), "dpu-07");
        assert_eq!(a.timeout_s, 120.0);
        assert_eq!(c.nodes[1].bmc.driver, BmcDriver::Openbmc);
        let bad = |from: &str, to: &str, want: &str| {
            let text = good.replacen(from, to, 1);
            assert_ne!(text, good, "{from}");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        };
        bad("dpu-07:16600", "dpu-07", "is not host:port");
        bad("dpu-07:16600", "dpu-07:0", "from 1 to 65535");
        bad(
            "ca_file = \"ca.pem\"\n",
            "ca_file = \"ca.pem\"\n[node.nics]\novsdb = \"unix:/x\"\nrepresentors = [\"r\"]\n",
            "cannot be given with [node.agent]",
        );
        bad(
            "[node.agent]\naddress",
            "[node.agentx]\naddress",
            "unknown field `agentx`",
        );
        bad(
            "driver = \"openbmc\"\naddress = \"unix:path=/run/dbus/system_bus_socket\"",
            "driver = \"agent\"",
            "needs [node.agent]",
        );
        bad(
            "unix:path=/run/dbus/system_bus_socket\"",
            "unix:path=/run/dbus/system_bus_socket\"\nusername = \"root\"",
            "do not apply to an OpenBMC",
        );
        bad(
            "unix:path=/run/dbus/system_bus_socket",
            "10.0.0.5",
            "D-Bus address",
        );
        assert_eq!(split_host_port("[fd00::7]:16600"), Ok(("fd00::7", 16600)));
        assert!(split_host_port("fd00::7:16600").is_err());

        let agent = r#"
node = "bm-1"
cert_file = "a.pem"
key_file = "k.pem"
ca_file = "ca.pem"
[bmc]
driver = "openbmc"
"#;
        let a: AgentConfig = toml::from_str(agent).unwrap();
        a.validate().unwrap();
        assert_eq!(a.listen, "[::]:16600");
        let a: AgentConfig = toml::from_str(&agent.replace("openbmc", "agent")).unwrap();
        assert!(a.validate().unwrap_err().contains("the controller's"));
        let a: AgentConfig = toml::from_str(&agent.replace("bm-1", "bm 1")).unwrap();
        assert!(a.validate().unwrap_err().contains("without spaces"));
        // The packaged example is a valid configuration.
        let ex: AgentConfig =
            toml::from_str(include_str!("../packaging/metalvirt-agent.toml")).unwrap();
        ex.validate().unwrap();
        assert!(ex.disks.is_some() && ex.nics.is_some());
    }

    #[test]
    fn node_inventory_is_checked() {
        let good = r#"
[[node]]
name = "bm-1"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "redfish"
address = "https://10.0.0.5"
username = "admin"
password_file = "bm-1.pass"

[[node]]
name = "bm-2"
cores = 8
memory_mib = 1024
[node.bmc]
driver = "ipmi"
address = "10.0.0.6:6230"
username = "admin"
password_file = "/etc/metalvirt/bm-2.pass"
cipher_suite = 17
"#;
        let c = Config::from_toml(good).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].bmc.driver, BmcDriver::Redfish);
        assert_eq!(c.nodes[0].bmc.timeout_s, 60.0);
        assert!(c.nodes[0].bmc.boot_persistent);
        assert_eq!(c.nodes[1].bmc.cipher_suite, 17);
        let bad = |from: &str, to: &str, want: &str| {
            let text = good.replacen(from, to, 1);
            assert_ne!(text, good, "{from}");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        };
        bad("name = \"bm-2\"", "name = \"bm-1\"", "listed twice");
        bad(
            "password_file = \"bm-1.pass\"",
            "password = \"x\"",
            "unknown field `password`",
        );
        bad(
            "password_file = \"bm-1.pass\"",
            "",
            "password_file is required",
        );
        bad("https://10.0.0.5", "10.0.0.5", "http:// or https:// URL");
        bad(
            "https://10.0.0.5",
            "http://10.0.0.5",
            "insecure_http = true",
        );
        let lab = good
            .replacen("https://10.0.0.5", "http://10.0.0.5", 1)
            .replacen(
                "password_file = \"bm-1.pass\"",
                "password_file = \"bm-1.pass\"\ninsecure_http = true",
                1,
            );
        Config::from_toml(&lab).expect("plain http when asked for");
        bad("driver = \"ipmi\"", "driver = \"smash\"", "unknown variant");
        bad("10.0.0.6:6230", "http://10.0.0.6", "not a URL");
        bad("cipher_suite = 17", "insecure = true", "Redfish only");
        bad("username = \"admin\"\npassword_file = \"bm-1.pass\"", "username = \"admin\"\npassword_file = \"bm-1.pass\"\ninsecure = true\nca_bundle = \"ca.pem\"", "exclude each other");
        bad("cores = 8", "cores = 0", "must be positive");
    }

    #[test]
    fn nic_pools_are_checked() {
        let node = |name: &str, nics: &str| {
            format!(
                "[[node]]\nname = \"{name}\"\ncores = 1\nmemory_mib = 1\n[node.bmc]\ndriver = \"sim\"\n[node.nics]\n{nics}\n"
            )
        };
        let ok = node(
            "a",
            "ovsdb = \"unix:/run/db.sock\"\nrepresentors = [\"pf0vf{0..3}\", \"pf1vf0\"]\nfunctions = [\"vf{0..4}\"]",
        );
        let c = Config::from_toml(&ok).unwrap();
        let nics = c.nodes[0].nics.as_ref().unwrap();
        assert_eq!(nics.bridge, "br-int");
        assert_eq!(nics.wait, NicWait::Ofport);
        let pool = nics.pool().unwrap();
        assert_eq!(pool.len(), 5);
        assert_eq!(pool[4], ("vf4".to_string(), "pf1vf0".to_string()));
        let bad = |nics: &str, want: &str| {
            let e = Config::from_toml(&node("a", nics)).unwrap_err();
            assert!(e.contains(want), "{nics}: {e}");
        };
        bad("representors = [\"pf0vf0\"]", "nics.ovsdb is required");
        bad(
            "ovsdb = \"/run/db.sock\"\nrepresentors = [\"x\"]",
            "unix:/path, ssl:host:port or tcp:host:port",
        );
        bad("ovsdb = \"unix:/s\"", "has no NIC functions");
        bad(
            "ovsdb = \"unix:/s\"\nrepresentors = [\"a\", \"a\"]",
            "lists 'a' twice",
        );
        bad(
            "ovsdb = \"unix:/s\"\nrepresentors = [\"a{0..1}\"]\nfunctions = [\"f\"]",
            "1 functions for 2 representors",
        );
        bad(
            "ovsdb = \"unix:/s\"\nrepresentors = [\"a-very-long-representor\"]",
            "not a network device name",
        );
        bad(
            "ovsdb = \"unix:/s\"\nrepresentors = [\"a\"]\nwait = \"forever\"",
            "unknown variant",
        );
        bad(
            "ovsdb = \"unix:/s\"\nrepresentors = [\"a\"]\nmac_command = []",
            "must name a program",
        );
        // Two nodes on one OVSDB cannot share a representor; on different ones they can.
        let two = |addr: &str| {
            node("a", "ovsdb = \"unix:/s\"\nrepresentors = [\"pf0vf{0..3}\"]")
                + &node(
                    "b",
                    &format!("ovsdb = \"{addr}\"\nrepresentors = [\"pf0vf3\"]"),
                )
        };
        let e = Config::from_toml(&two("unix:/s")).unwrap_err();
        assert!(
            e.contains("nodes 'a' and 'b' both list representor 'pf0vf3'"),
            "{e}"
        );
        Config::from_toml(&two("tcp:10.0.0.2:6640")).unwrap();
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, "").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.resolve(Path::new("a.pass")), d.path().join("a.pass"));
        assert_eq!(c.resolve(Path::new("/x/a.pass")), Path::new("/x/a.pass"));
    }

    #[test]
    fn network_listener_settings_like_libvirtd() {
        let c = Config::from_toml("tls_port = \"16600\"\ntcp_port = 16601\n").unwrap();
        assert_eq!((c.tls_port, c.tcp_port), (Port(16600), Port(16601)));
        assert!(c.listen_tls && !c.listen_tcp);
        for (text, key) in [
            ("tls_port = \"https\"", "'https' is not a port number"),
            ("tls_port = 0", "'0' is not a port number"),
            ("tcp_port = 70000", "'70000' is not a port number"),
            ("listen_tcp = true", "auth_tcp"),
            ("auth_tcp = \"kerberos\"", "auth_tcp 'kerberos'"),
            ("auth_tls = \"sasl\"", "auth_tls 'sasl'"),
            ("max_anonymous_clients = 0", "max_anonymous_clients"),
            ("listen_addr = \" \"", "listen_addr"),
            ("tls_allowed_dn_list = [\"\"]", "tls_allowed_dn_list"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        Config::from_toml("listen_tcp = true\nauth_tcp = \"none\"\n").unwrap();
    }

    #[test]
    fn simulated_lab_only_without_a_file_or_with_a_sim_section() {
        assert!(Config::default().sim_lab);
        assert!(!Config::from_toml("keepalive_count = 3\n").unwrap().sim_lab);
        assert!(Config::from_toml("[sim]\n").unwrap().sim_lab);
    }

    #[test]
    fn socket_dir_for_users_other_than_root() {
        let mut c = Config::default();
        c.apply_user_defaults(0);
        assert_eq!(c.socket_dir, Path::new(SYSTEM_SOCKET_DIR));
        let mut c = Config::from_toml("socket_dir = \"/srv/s\"\n").unwrap();
        c.apply_user_defaults(1000);
        assert_eq!(c.socket_dir, Path::new("/srv/s"));
        if std::env::var_os("XDG_RUNTIME_DIR").is_some() || std::env::var_os("HOME").is_some() {
            let mut c = Config::default();
            c.apply_user_defaults(1000);
            assert!(
                c.socket_dir.ends_with("libvirt"),
                "{}",
                c.socket_dir.display()
            );
            assert_ne!(c.socket_dir, Path::new(SYSTEM_SOCKET_DIR));
        }
    }

    #[test]
    fn packaged_example_parses() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/metalvirtd.toml");
        let c = Config::load(Path::new(p)).unwrap();
        // As installed it serves no servers: neither an inventory nor the simulation.
        assert!(c.nodes.is_empty() && !c.sim_lab);
        // Its commented node inventory is valid too, once uncommented.
        let text = std::fs::read_to_string(p).unwrap();
        let from = text.find("# [[node]]").expect("an inventory example");
        let to = text
            .find("# The built-in SIMULATED lab")
            .expect("the [sim] section");
        assert!(from < to, "the inventory example comes before [sim]");
        let inventory: String = text[from..to]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&inventory).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].bmc.driver, BmcDriver::Redfish);
        assert_eq!(c.nodes[1].bmc.driver, BmcDriver::Ipmi);
        assert_eq!(c.nodes[0].nics.as_ref().unwrap().pool().unwrap().len(), 16);
        let disks = c.nodes[0].disks.as_ref().unwrap();
        assert_eq!(disks.frontend, DiskFrontend::Nvmf);
        assert_eq!(
            disks.fabric_listener().unwrap(),
            ("TCP".to_string(), "10.0.9.7".to_string(), 4420)
        );
    }

    #[test]
    fn ovsdb_ssl_needs_its_key_certificate_and_ca() {
        let node = |nics: &str| {
            format!(
                "[[node]]\nname = \"n1\"\ncores = 1\nmemory_mib = 1024\n[node.bmc]\ndriver = \"sim\"\n[node.nics]\nrepresentors = [\"pf0vf0\"]\n{nics}\n"
            )
        };
        let err = |nics: &str| Config::from_toml(&node(nics)).unwrap_err();
        assert!(err("ovsdb = \"ssl:10.0.0.7:6640\"").contains("needs nics.ssl_key"));
        assert!(err("ovsdb = \"unix:/s\"\nssl_ca = \"ca.pem\"").contains("ssl: address only"));
        assert!(err("ovsdb = \"http://x\"").contains("unix:/path, ssl:host:port"));
        Config::from_toml(&node(
            "ovsdb = \"ssl:10.0.0.7:6640\"\nssl_key = \"k.pem\"\nssl_cert = \"c.pem\"\nssl_ca = \"ca.pem\"",
        ))
        .unwrap();
    }

    #[test]
    fn disks_sections_are_checked() {
        let node = |disks: &str| {
            format!(
                "[[node]]\nname = \"n1\"\ncores = 1\nmemory_mib = 1024\n[node.bmc]\ndriver = \"sim\"\n[node.disks]\n{disks}\n"
            )
        };
        let err = |disks: &str| Config::from_toml(&node(disks)).unwrap_err();
        assert!(err("frontend = \"nvmf\"\nlisten = \"tcp:10.0.0.1:4420\"").contains("disks.spdk"));
        assert!(err("spdk = \"/s\"\nlisten = \"tcp:host:4420\"").contains("not an IP address"));
        assert!(err("spdk = \"/s\"\nlisten = \"udp:10.0.0.1:4420\"").contains("tcp:<addr>:<port>"));
        assert!(
            err("spdk = \"/s\"\nfrontend = \"vfio-user\"\nlisten = \"rel\"")
                .contains("absolute path")
        );
        assert!(err("spdk = \"/s\"\nfrontend = \"vhost-blk\"\nbogus = 1").contains("bogus"));
        // The fabric subsystem admits one host: its NQN is required and checked.
        assert!(err("spdk = \"/s\"\nlisten = \"tcp:10.0.0.1:4420\"")
            .contains("disks.host_nqn is required"));
        assert!(
            err("spdk = \"/s\"\nlisten = \"tcp:10.0.0.1:4420\"\nhost_nqn = \"host-7\"")
                .contains("not an NVMe qualified name")
        );
        let c = Config::from_toml(&node(
            "spdk = \"/s\"\nlisten = \"rdma:[fd00::1]:4420\"\nhost_nqn = \"nqn.2014-08.org.nvmexpress:uuid:7f2a\"",
        ))
        .unwrap();
        assert_eq!(
            c.nodes[0]
                .disks
                .as_ref()
                .unwrap()
                .fabric_listener()
                .unwrap(),
            ("RDMA".to_string(), "fd00::1".to_string(), 4420)
        );
        let two = format!(
            "{}{}",
            node("spdk = \"/s\"\nfrontend = \"vhost-blk\""),
            node("spdk = \"/s\"\nfrontend = \"vhost-blk\"").replace("n1", "n2")
        );
        assert!(Config::from_toml(&two)
            .unwrap_err()
            .contains("both name SPDK socket /s"));
    }

    #[test]
    fn representor_patterns_expand_pattern() {
        assert_eq!(
            expand_pattern("pf0vf{0..2}").unwrap(),
            ["pf0vf0", "pf0vf1", "pf0vf2"]
        );
        assert_eq!(
            expand_pattern("en3f0pf0sf{8..9}x").unwrap(),
            ["en3f0pf0sf8x", "en3f0pf0sf9x"]
        );
        assert_eq!(expand_pattern("eth7").unwrap(), ["eth7"]);
        for bad in [
            "pf{3..1}",
            "pf{a..b}",
            "pf{0..1",
            "pf{0-3}",
            "pf{0..1}{0..1}",
        ] {
            assert!(expand_pattern(bad).is_err(), "{bad}");
        }
    }
}
