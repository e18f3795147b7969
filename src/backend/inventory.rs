//! Builds the nodes from the configuration: the `[[node]]` inventory with each node's BMC
//! driver, disk mapping and NIC plumbing; with no inventory, the simulated lab (no
//! configuration file, a `[sim]` section or `--sim-nodes`) or no nodes at all.
//!
//! Disks of nodes without `[node.disks]` and NICs of nodes without `[node.nics]` are the
//! simulated lab's; every such node says so at start-up and in `virDomainGetMessages`. Nodes
//! naming the same OVSDB share one connection to it; each node has its own SPDK.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::agent::client::{AgentDisks, AgentLink, AgentNics, AgentPower};
use super::bmc::ipmi::{self, Ipmi, IpmiSettings};
use super::bmc::openbmc::{OpenBmc, OpenBmcSettings};
use super::bmc::read_password;
use super::bmc::redfish::{Redfish, RedfishSettings};
use super::ovs::{Function, OvsNics, OvsSettings, Session, WaitFor};
use super::spdk::{rpc::Spdk, Frontend, Listen, Nvmf, SpdkDisks, SpdkSettings, VhostBlk};
use super::{sim, Disks, Nics, Node, NodeSpec, Power, Simulated};
use crate::config::{
    BmcConfig, BmcDriver, Config, DiskFrontend, DisksConfig, DisksDriver, NicWait, NicsConfig,
    NicsDriver,
};

/// The nodes the daemon serves.
pub fn build(cfg: &Config) -> Result<Vec<Node>, String> {
    if cfg.nodes.is_empty() && !cfg.sim_lab {
        tracing::warn!(
            "no nodes configured: serving, with no server to run domains on; add [[node]] entries to the configuration (or a [sim] section for the simulated lab)"
        );
        return Ok(Vec::new());
    }
    if cfg.nodes.is_empty() {
        tracing::warn!(
            nodes = cfg.sim.nodes,
            "running the SIMULATED lab: no real BMC, DPU or network is touched"
        );
        return sim::build(&cfg.sim, &cfg.state_dir);
    }
    let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
    let sims = sim::build_named(&cfg.sim, &cfg.state_dir, &names)?;
    let mut nodes = Vec::with_capacity(names.len());
    let mut sessions: HashMap<String, Arc<Session>> = HashMap::new();
    let sim_pool = sim::nic_pool();
    for (nc, sim) in cfg.nodes.iter().zip(sims) {
        let site = Site {
            node: &nc.name,
            bmc: &nc.bmc,
            resolve: &|p| cfg.resolve(p),
        };
        let agent = match &nc.agent {
            Some(a) => Some(
                AgentLink::start(&nc.name, a, &|p| cfg.resolve(p))
                    .map_err(|e| format!("node '{}': {e}", nc.name))?,
            ),
            None => None,
        };
        let (power, desc): (Arc<dyn Power>, String) = match (&agent, nc.bmc.driver) {
            (Some(link), BmcDriver::Agent) => (
                AgentPower::new(link.clone()),
                format!("the BMC of agent {}", link.addr()),
            ),
            _ => power(&site, Some(sim.clone()))?,
        };
        let real_nics = nc.nics.as_ref().filter(|n| n.driver == NicsDriver::Ovs);
        let real_disks = nc.disks.as_ref().filter(|d| d.driver == DisksDriver::Spdk);
        let nics: Arc<dyn Nics> = match (&agent, real_nics) {
            (Some(link), _) => Arc::new(AgentNics(link.clone())),
            (None, Some(n)) => Arc::new(ovs_nics(&|p| cfg.resolve(p), &nc.name, n, &mut sessions)?),
            (None, None) => sim.clone(),
        };
        let disks: Arc<dyn Disks> = match (&agent, real_disks) {
            (Some(link), _) => Arc::new(AgentDisks(link.clone())),
            (None, Some(d)) => Arc::new(spdk_disks(&nc.name, d)?),
            (None, None) => sim.clone(),
        };
        let simulated = Simulated {
            power: nc.bmc.driver == BmcDriver::Sim,
            disks: real_disks.is_none() && agent.is_none(),
            nics: real_nics.is_none() && agent.is_none(),
        };
        let agent_desc = agent.as_ref().map(|a| format!("agent {}", a.addr()));
        let nics_desc = agent_desc
            .as_deref()
            .or(real_nics.and_then(|n| n.ovsdb.as_deref()))
            .unwrap_or("simulated");
        let disks_desc = agent_desc
            .as_deref()
            .or(real_disks.and_then(|d| d.spdk.as_deref()))
            .unwrap_or("simulated");
        match simulated.sentence() {
            Some(s) => {
                tracing::info!(node = %nc.name, bmc = %desc, disks = disks_desc, nics = nics_desc, "node configured; its {s}")
            }
            None => {
                tracing::info!(node = %nc.name, bmc = %desc, disks = disks_desc, nics = nics_desc, "node configured")
            }
        }
        nodes.push(Node {
            spec: NodeSpec {
                name: nc.name.clone(),
                sockets: nc.sockets,
                cores: nc.cores,
                threads: nc.threads,
                memory_kib: nc.memory_mib * 1024,
                mhz: nc.mhz,
                arch: nc.arch.clone(),
                cpu_model: nc
                    .cpu_model
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
                simulated,
                power_on_timeout: Duration::from_secs_f64(nc.bmc.power_on_timeout_s),
                power_off_timeout: Duration::from_secs_f64(nc.bmc.power_off_timeout_s),
                boot_persistent: nc.bmc.boot_persistent,
                bmc_desc: desc,
                // An agent's NIC pool is its own configuration's: none is listed here.
                nic_functions: match (real_nics, &agent) {
                    (_, Some(_)) => Vec::new().into(),
                    (Some(n), None) => n.pool()?.into(),
                    (None, None) => sim_pool.clone(),
                },
                nic_bridge: real_nics.map_or(sim::BRIDGE, |n| n.bridge.as_str()).into(),
            },
            power,
            disks,
            nics,
        });
    }
    Ok(nodes)
}

/// SPDK disk mapping for node `node` (the daemon's `[node.disks]`, an agent's `[disks]`).
pub(super) fn spdk_disks(node: &str, d: &DisksConfig) -> Result<SpdkDisks, String> {
    let secs = Duration::from_secs_f64;
    let attach_timeout = secs(d.attach_timeout_s);
    let frontend: Box<dyn Frontend> = match d.frontend {
        DiskFrontend::Nvmf => {
            let (trtype, addr, port) = d
                .fabric_listener()
                .map_err(|e| format!("node '{node}': {e}"))?;
            Box::new(
                Nvmf::new(
                    Listen::Fabric { trtype, addr, port },
                    &d.nqn_prefix,
                    attach_timeout,
                )
                .admitting(d.host_nqn.clone()),
            )
        }
        DiskFrontend::VfioUser => Box::new(Nvmf::new(
            Listen::VfioUser {
                path: d.listen.clone().unwrap_or_default(),
            },
            &d.nqn_prefix,
            attach_timeout,
        )),
        DiskFrontend::VhostBlk => Box::new(VhostBlk::new(attach_timeout)),
    };
    let spdk = Arc::new(Spdk::new(
        d.spdk.clone().unwrap_or_default(),
        secs(d.timeout_s),
    ));
    Ok(SpdkDisks::new(
        SpdkSettings {
            node: node.to_string(),
            initiator_iqn: d
                .initiator_iqn
                .clone()
                .unwrap_or_else(|| format!("iqn.2026-11.io.metalvirt:{node}")),
            rbd_block_size: d.rbd_block_size,
            attach_timeout,
            resize_wait: secs(d.resize_wait_s),
            heal_interval: secs(d.heal_interval_s),
        },
        spdk,
        frontend,
    ))
}

/// Open vSwitch NIC plumbing for node `node`; nodes naming the same OVSDB share a session.
/// `resolve` makes the configuration's relative paths absolute.
pub(super) fn ovs_nics(
    resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    node: &str,
    n: &NicsConfig,
    sessions: &mut HashMap<String, Arc<Session>>,
) -> Result<OvsNics, String> {
    let addr = n.ovsdb.clone().unwrap_or_default();
    let timeout = Duration::from_secs_f64(n.timeout_s);
    let tls = match (&n.ssl_key, &n.ssl_cert, &n.ssl_ca) {
        (Some(k), Some(c), Some(ca)) => {
            let read = |p: &std::path::PathBuf| {
                let p = resolve(p);
                std::fs::read(&p)
                    .map_err(|e| format!("node '{node}': cannot read {}: {e}", p.display()))
            };
            Some(
                crate::backend::ovs::ovsdb::tls_config(&read(ca)?, &read(c)?, &read(k)?)
                    .map_err(|e| format!("node '{node}': OVSDB over ssl: {e}"))?,
            )
        }
        _ => None,
    };
    if addr.starts_with("tcp:") {
        tracing::warn!(node, ovsdb = %addr, "OVSDB over plain tcp: anyone on that network can change this node's switch; use ssl: or unix:");
    }
    let session = sessions
        .entry(addr.clone())
        .or_insert_with(|| Session::start(&addr, timeout, tls))
        .clone();
    let functions = n
        .pool()
        .map_err(|e| format!("node '{node}': {e}"))?
        .into_iter()
        .map(|(function, representor)| Function {
            function,
            representor,
        })
        .collect();
    Ok(OvsNics::new(
        OvsSettings {
            node: node.to_string(),
            bridge: n.bridge.clone(),
            functions,
            interface_type: n.interface_type.clone(),
            wait: match n.wait {
                NicWait::None => WaitFor::Commit,
                NicWait::Ofport => WaitFor::Ofport,
                NicWait::OvnInstalled => WaitFor::OvnInstalled,
            },
            plug_timeout: Duration::from_secs_f64(n.plug_timeout_s),
            mac_command: n.mac_command.clone(),
            mac_sysfs: n.mac_sysfs.clone(),
            step_timeout: timeout,
        },
        session,
    ))
}

/// Where a BMC is configured: its node, its `[bmc]` section, and how the configuration's
/// relative paths resolve (the daemon's `[node.bmc]`, an agent's `[bmc]`).
pub(super) struct Site<'a> {
    /// The node.
    pub node: &'a str,
    /// Its BMC's settings.
    pub bmc: &'a BmcConfig,
    /// Makes the configuration's relative paths absolute.
    pub resolve: &'a dyn Fn(&std::path::Path) -> std::path::PathBuf,
}

/// The BMC driver `site` names and its description for messages; `sim` serves the
/// simulated one. Must run inside a tokio runtime (OpenBMC's signal watch starts).
pub(super) fn power(
    site: &Site<'_>,
    sim: Option<Arc<dyn Power>>,
) -> Result<(Arc<dyn Power>, String), String> {
    Ok(match site.bmc.driver {
        BmcDriver::Sim => (
            sim.ok_or_else(|| format!("node '{}': no simulated BMC here", site.node))?,
            "simulated BMC".into(),
        ),
        BmcDriver::Redfish => (Arc::new(redfish(site)?), bmc_desc(site.bmc)),
        BmcDriver::Ipmi => (Arc::new(ipmi(site)?), bmc_desc(site.bmc)),
        BmcDriver::Agent => {
            return Err(format!(
                "node '{}': bmc.driver = \"agent\" needs the node's agent",
                site.node
            ))
        }
        BmcDriver::Openbmc => (
            OpenBmc::new(OpenBmcSettings {
                node: site.node.to_string(),
                address: site.bmc.address.clone(),
                timeout: site.bmc.timeout(),
            }),
            bmc_desc(site.bmc),
        ),
    })
}

fn bmc_desc(b: &BmcConfig) -> String {
    let kind = match b.driver {
        BmcDriver::Redfish => "redfish",
        BmcDriver::Ipmi => "ipmi",
        BmcDriver::Openbmc => "openbmc",
        BmcDriver::Sim => "sim",
        BmcDriver::Agent => "agent",
    };
    format!("{kind} {}", b.address.as_deref().unwrap_or(""))
}

fn password(site: &Site<'_>) -> Result<crate::secret_value::SecretValue, String> {
    let file = site
        .bmc
        .password_file
        .as_deref()
        .ok_or_else(|| format!("node '{}': bmc.password_file is required", site.node))?;
    read_password(site.node, &(site.resolve)(file))
}

fn redfish(site: &Site<'_>) -> Result<Redfish, String> {
    let b = site.bmc;
    if b.insecure {
        tracing::warn!(
            node = site.node,
            "bmc.insecure = true: the BMC's TLS certificate is NOT verified"
        );
    }
    if b.insecure_http {
        tracing::warn!(
            node = site.node,
            "bmc.insecure_http = true: the BMC credentials cross the network in clear"
        );
    }
    let ca_bundle_pem = match &b.ca_bundle {
        Some(p) => {
            let p = (site.resolve)(p);
            Some(std::fs::read(&p).map_err(|e| {
                format!(
                    "node '{}': cannot read CA bundle {}: {e}",
                    site.node,
                    p.display()
                )
            })?)
        }
        None => None,
    };
    Redfish::new(RedfishSettings {
        node: site.node.to_string(),
        base_url: b.address.clone().unwrap_or_default(),
        system: b.system.clone(),
        username: b.username.clone().unwrap_or_default(),
        password: password(site)?,
        ca_bundle_pem,
        insecure: b.insecure,
        timeout: b.timeout(),
        retries: b.retries,
        max_concurrency: b.max_concurrency.unwrap_or(4),
    })
    .map_err(|e| format!("node '{}': {e}", site.node))
}

fn ipmi(site: &Site<'_>) -> Result<Ipmi, String> {
    let b = site.bmc;
    let (host, port) = ipmi::parse_address(b.address.as_deref().unwrap_or(""))
        .map_err(|e| format!("node '{}': {e}", site.node))?;
    let password = password(site)?;
    if password.expose().len() > 20 {
        return Err(format!(
            "node '{}': IPMI passwords are at most 20 bytes",
            site.node
        ));
    }
    // A bare name is looked up in PATH; a path is taken from the configuration's directory.
    let tool = match &b.ipmitool {
        Some(p) if p.components().count() > 1 => (site.resolve)(p),
        Some(p) => p.clone(),
        None => "ipmitool".into(),
    };
    if !tool.is_absolute() && find_in_path(&tool).is_none() {
        return Err(format!(
            "node '{}': {} not found in PATH (install the ipmitool package or set bmc.ipmitool)",
            site.node,
            tool.display()
        ));
    }
    Ok(Ipmi::new(IpmiSettings {
        node: site.node.to_string(),
        host,
        port,
        username: b.username.clone().unwrap_or_default(),
        password,
        cipher_suite: b.cipher_suite,
        ipmitool: tool,
        timeout: b.timeout(),
        retries: b.retries,
        max_concurrency: b.max_concurrency.unwrap_or(1),
        graceful_restart_wait: Duration::from_secs_f64(b.power_off_timeout_s),
    }))
}

fn find_in_path(name: &std::path::Path) -> Option<std::path::PathBuf> {
    if name.components().count() > 1 {
        return name.exists().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
