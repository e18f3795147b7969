//! The "host" metalvirt presents: all nodes together, as one libvirt host. Each node is one
//! NUMA cell of the capabilities topology; CPU ids are numbered across nodes in node order.
//! `cpu`: the CPU model APIs; `inventory`: networks, node devices and the object kinds
//! metalvirt has none of.

pub mod cpu;
pub mod inventory;

use std::fmt::Write;

use crate::driver::Driver;
use crate::error::{VirError, VirResult};

/// Machine types offered for x86_64 (nova requires `pc`; `q35` for UEFI images).
pub const MACHINES: &[(&str, &str)] = &[("pc", "pc-i440fx-8.2"), ("q35", "pc-q35-8.2")];

/// Hardware threads over all nodes.
pub fn total_cpus(d: &Driver) -> u32 {
    d.nodes().iter().map(|n| n.spec.cpus()).sum()
}

/// The first host CPU id of a node.
pub fn first_cpu_of(d: &Driver, node: &str) -> u32 {
    d.nodes()
        .iter()
        .take_while(|n| n.spec.name != node)
        .map(|n| n.spec.cpus())
        .sum()
}

/// Largest vcpu count a domain can have: the biggest node.
pub fn max_vcpus(d: &Driver) -> u32 {
    d.nodes().iter().map(|n| n.spec.cpus()).max().unwrap_or(0)
}

/// `virNodeGetInfo`. With identical nodes the topology is exact (nodes × sockets × cores ×
/// threads); otherwise libvirt's fallback applies (1 node, 1 socket, all CPUs as cores).
/// `virNodeInfo`: the host as libvirt describes one machine (dispatch turns it into the wire
/// struct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// CPU model string (the architecture, as libvirt reports it).
    pub model: String,
    /// Memory in KiB.
    pub memory: u64,
    /// Active CPUs.
    pub cpus: i32,
    /// CPU frequency in MHz.
    pub mhz: i32,
    /// NUMA cells (one per node when all nodes share a topology).
    pub nodes: i32,
    /// Sockets per cell.
    pub sockets: i32,
    /// Cores per socket.
    pub cores: i32,
    /// Threads per core.
    pub threads: i32,
}

/// `virNodeGetInfo`.
pub fn node_info(d: &Driver) -> NodeInfo {
    let nodes = d.nodes();
    let cpus = total_cpus(d);
    let memory = nodes.iter().map(|n| n.spec.memory_kib).sum();
    let first = nodes.first().map(|n| n.spec.clone());
    let uniform = nodes.iter().all(|n| {
        first.as_ref().is_some_and(|f| {
            (n.spec.sockets, n.spec.cores, n.spec.threads) == (f.sockets, f.cores, f.threads)
        })
    });
    let (nn, sockets, cores, threads) = match (&first, uniform) {
        (Some(f), true) => (
            nodes.len() as i32,
            f.sockets as i32,
            f.cores as i32,
            f.threads as i32,
        ),
        _ => (1, 1, cpus as i32, 1),
    };
    NodeInfo {
        model: first.as_ref().map(|f| f.arch.clone()).unwrap_or_default(),
        memory,
        cpus: cpus as i32,
        mhz: first.map(|f| f.mhz as i32).unwrap_or(0),
        nodes: nn,
        sockets,
        cores,
        threads,
    }
}

/// Free memory: the memory of nodes no domain is bound to, in bytes.
pub fn free_memory_bytes(d: &Driver) -> u64 {
    let busy = busy_nodes(d);
    d.nodes()
        .iter()
        .filter(|n| !busy.contains(&n.spec.name))
        .map(|n| n.spec.memory_kib * 1024)
        .sum()
}

fn busy_nodes(d: &Driver) -> std::collections::HashSet<String> {
    d.all()
        .iter()
        .filter_map(|o| o.with(|s| s.node.clone()))
        .collect()
}

/// `virNodeGetCellsFreeMemory`: per node (cell), bytes free.
pub fn cells_free_memory(d: &Driver, start: i32, max: i32) -> VirResult<Vec<u64>> {
    let n = d.nodes().len() as i32;
    if start < 0 || start >= n.max(1) || max <= 0 {
        return Err(VirError::invalid_arg("Range exceeds available cells"));
    }
    let busy = busy_nodes(d);
    Ok(d.nodes()
        .iter()
        .skip(start as usize)
        .take(max as usize)
        .map(|x| {
            if busy.contains(&x.spec.name) {
                0
            } else {
                x.spec.memory_kib * 1024
            }
        })
        .collect())
}

/// `virNodeGetCPUStats`: metalvirt does not see the servers' CPU usage, so busy nodes'
/// CPUs count as fully used ("user") and free ones as idle, scaled by the daemon's uptime.
pub fn cpu_stats(d: &Driver, cpu: i32) -> VirResult<Vec<(&'static str, u64)>> {
    let total = total_cpus(d) as i32;
    if cpu != -1 && (cpu < 0 || cpu >= total) {
        return Err(VirError::invalid_arg(&format!(
            "Invalid cpuNum in virNodeGetCPUStats: {cpu}"
        )));
    }
    let up = crate::uptime_ns();
    let busy = busy_nodes(d);
    let (mut used, mut idle) = (0u64, 0u64);
    let mut id = 0i32;
    for n in d.nodes() {
        for _ in 0..n.spec.cpus() {
            if cpu == -1 || cpu == id {
                if busy.contains(&n.spec.name) {
                    used += up;
                } else {
                    idle += up;
                }
            }
            id += 1;
        }
    }
    Ok(vec![
        ("kernel", 0),
        ("user", used),
        ("idle", idle),
        ("iowait", 0),
    ])
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// The host's uuid (capabilities, the `computer` device): stable per host name.
pub fn host_uuid(d: &Driver) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_DNS, d.hostname().as_bytes())
}

/// `virConnectGetCapabilities`.
pub fn capabilities(d: &Driver) -> String {
    let nodes = d.nodes();
    let info = node_info(d);
    let mut x = String::with_capacity(4096);
    let host_uuid = host_uuid(d);
    let _ = writeln!(
        x,
        "<capabilities>\n\n  <host>\n    <uuid>{host_uuid}</uuid>\n    <cpu>"
    );
    let _ = writeln!(x, "      <arch>x86_64</arch>");
    if let Some(m) = cpu::host_model(d) {
        let _ = writeln!(x, "      <model>{}</model>", esc(m));
    }
    let _ = writeln!(
        x,
        "      <topology sockets='{}' dies='1' cores='{}' threads='{}'/>",
        info.sockets, info.cores, info.threads
    );
    let _ = writeln!(
        x,
        "    </cpu>\n    <power_management/>\n    <iommu support='no'/>"
    );
    // No <migration_features>: bare-metal servers cannot be migrated.
    let _ = writeln!(x, "    <topology>\n      <cells num='{}'>", nodes.len());
    let mut cpu_id = 0u32;
    for (i, n) in nodes.iter().enumerate() {
        let _ = writeln!(x, "        <cell id='{i}'>");
        let _ = writeln!(
            x,
            "          <memory unit='KiB'>{}</memory>",
            n.spec.memory_kib
        );
        let _ = writeln!(
            x,
            "          <pages unit='KiB' size='4'>{}</pages>",
            n.spec.memory_kib / 4
        );
        let _ = writeln!(x, "          <cpus num='{}'>", n.spec.cpus());
        let per_socket = n.spec.cores * n.spec.threads;
        let base = cpu_id;
        for s in 0..n.spec.sockets {
            for c in 0..n.spec.cores {
                let siblings: Vec<String> = (0..n.spec.threads)
                    .map(|t| (base + s * per_socket + c * n.spec.threads + t).to_string())
                    .collect();
                for _ in 0..n.spec.threads {
                    let _ = writeln!(
                        x,
                        "            <cpu id='{cpu_id}' socket_id='{}' die_id='0' core_id='{c}' siblings='{}'/>",
                        i as u32 * n.spec.sockets + s,
                        siblings.join(",")
                    );
                    cpu_id += 1;
                }
            }
        }
        let _ = writeln!(x, "          </cpus>\n        </cell>");
    }
    let _ = writeln!(x, "      </cells>\n    </topology>");
    let _ = writeln!(
        x,
        "    <secmodel>\n      <model>none</model>\n      <doi>0</doi>\n    </secmodel>\n  </host>\n"
    );
    let _ = writeln!(
        x,
        "  <guest>\n    <os_type>hvm</os_type>\n    <arch name='x86_64'>"
    );
    let _ = writeln!(x, "      <wordsize>64</wordsize>\n      <emulator>/usr/libexec/metalvirt/bare-metal</emulator>");
    for (alias, canonical) in MACHINES {
        let _ = writeln!(
            x,
            "      <machine maxCpus='{}'>{canonical}</machine>\n      <machine canonical='{canonical}' maxCpus='{}'>{alias}</machine>",
            max_vcpus(d),
            max_vcpus(d)
        );
    }
    let _ = writeln!(
        x,
        "      <domain type='qemu'/>\n      <domain type='kvm'/>\n    </arch>"
    );
    let _ = writeln!(x, "    <features>\n      <acpi default='on' toggle='yes'/>\n      <apic default='on' toggle='no'/>\n    </features>\n  </guest>\n\n</capabilities>");
    x
}

/// `virConnectGetDomainCapabilities`.
pub fn domain_capabilities(
    d: &Driver,
    arch: Option<&str>,
    machine: Option<&str>,
    virttype: Option<&str>,
) -> VirResult<String> {
    if let Some(a) = arch {
        if a != "x86_64" {
            return Err(VirError::config_unsupported(&format!(
                "Emulator '/usr/libexec/metalvirt/bare-metal' does not support arch '{a}'"
            )));
        }
    }
    let vt = virttype.unwrap_or("kvm");
    if vt != "kvm" && vt != "qemu" {
        return Err(VirError::config_unsupported(&format!(
            "virttype '{vt}' is not supported"
        )));
    }
    let canonical = match machine {
        None => MACHINES[0].1,
        Some(m) => MACHINES
            .iter()
            .find(|(a, c)| *a == m || *c == m)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                VirError::invalid_arg(&format!(
                    "the machine '{}' is not supported by emulator '/usr/libexec/metalvirt/bare-metal'",
                    esc(m)
                ))
            })?,
    };
    let q35 = canonical.contains("q35");
    let buses = if q35 { "sata" } else { "ide" };
    Ok(format!(
        "<domainCapabilities>
  <path>/usr/libexec/metalvirt/bare-metal</path>
  <domain>{vt}</domain>
  <machine>{canonical}</machine>
  <arch>x86_64</arch>
  <vcpu max='{maxv}'/>
  <iothreads supported='no'/>
  <os supported='yes'>
    <enum name='firmware'>
      <value>bios</value>
      <value>efi</value>
    </enum>
    <loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>
      <enum name='type'>
        <value>rom</value>
        <value>pflash</value>
      </enum>
      <enum name='readonly'>
        <value>yes</value>
        <value>no</value>
      </enum>
      <enum name='secure'>
        <value>yes</value>
        <value>no</value>
      </enum>
    </loader>
  </os>
  <cpu>
    <mode name='host-passthrough' supported='yes'>
      <enum name='hostPassthroughMigratable'>
        <value>off</value>
      </enum>
    </mode>
    <mode name='maximum' supported='no'/>
    <mode name='host-model' supported='no'/>
    <mode name='custom' supported='no'/>
  </cpu>
  <memoryBacking supported='no'/>
  <devices>
    <disk supported='yes'>
      <enum name='diskDevice'>
        <value>disk</value>
        <value>cdrom</value>
      </enum>
      <enum name='bus'>
        <value>{buses}</value>
        <value>scsi</value>
        <value>virtio</value>
        <value>usb</value>
      </enum>
      <enum name='model'>
        <value>virtio</value>
      </enum>
    </disk>
    <graphics supported='yes'>
      <enum name='type'>
        <value>vnc</value>
      </enum>
    </graphics>
    <video supported='yes'>
      <enum name='modelType'>
        <value>vga</value>
        <value>cirrus</value>
        <value>virtio</value>
        <value>none</value>
      </enum>
    </video>
    <hostdev supported='no'/>
    <rng supported='no'/>
    <filesystem supported='no'/>
    <tpm supported='no'/>
    <redirdev supported='no'/>
    <channel supported='no'/>
  </devices>
  <features>
    <gic supported='no'/>
    <vmcoreinfo supported='yes'/>
    <genid supported='no'/>
    <backingStoreInput supported='no'/>
    <backup supported='no'/>
    <sev supported='no'/>
    <sgx supported='no'/>
  </features>
</domainCapabilities>
",
        maxv = max_vcpus(d)
    ))
}

/// `virConnectGetSysinfo`: describes the daemon's host, not the servers.
pub fn sysinfo(d: &Driver) -> String {
    let nodes = d.nodes();
    let all = nodes.len();
    let sim_power = nodes.iter().filter(|n| n.spec.simulated.power).count();
    let sim_disks = nodes.iter().filter(|n| n.spec.simulated.disks).count();
    let sim_nics = nodes.iter().filter(|n| n.spec.simulated.nics).count();
    let lab = if nodes.iter().all(|n| n.spec.simulated.all()) {
        format!("SIMULATED lab, {all} simulated nodes")
    } else if nodes.iter().any(|n| n.spec.simulated.any()) {
        format!("{all} nodes, {sim_power} with a simulated BMC, {sim_disks} with simulated disks, {sim_nics} with simulated NICs")
    } else {
        format!("{all} nodes")
    };
    format!(
        "<sysinfo type='smbios'>
  <system>
    <entry name='manufacturer'>metalvirt</entry>
    <entry name='product'>metalvirt bare-metal host ({lab})</entry>
    <entry name='version'>{}</entry>
    <entry name='family'>Bare Metal</entry>
  </system>
</sysinfo>
",
        env!("CARGO_PKG_VERSION")
    )
}
