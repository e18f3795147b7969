//! Where a disk's data lives, as the backends need it: the domain XML's `<disk>` (pure data,
//! `domain/`) turned into a backend [`Volume`]. Here, above both, so neither knows the other.

use crate::backend::Volume;
use crate::domain::devices::DiskDef;
use crate::error::{VirError, VirResult};

/// The network disk protocols a DPU connects.
const DISK_PROTOCOLS: &str = "nvme-tcp, nvme-rdma, iscsi and rbd";

/// Where a disk's data lives, checked: a network disk must name its volume and a host
/// (`VIR_ERR_XML_ERROR` otherwise), and only what a DPU can connect is accepted —
/// NVMe-oF (`nvme-tcp`, `nvme-rdma`, a metalvirt extension), iSCSI (also as a
/// `/dev/disk/by-path/ip-…-iscsi-…-lun-N` block path), Ceph RBD, block devices and files
/// (on the DPU) and storage-pool volumes (simulated lab only). Other protocols and disk
/// types are `VIR_ERR_CONFIG_UNSUPPORTED` naming them. A disk with no source (an empty
/// CD-ROM) is `Volume::Other`.
pub fn disk_volume(d: &DiskDef) -> VirResult<Volume> {
    let t = d.target_dev.as_deref().unwrap_or("?");
    let s = &d.source;
    match d.disk_type.as_str() {
        "network" => {}
        "block" => {
            return Ok(match s.dev.as_deref() {
                None => Volume::Other,
                Some(p) => by_path_iscsi(p).unwrap_or_else(|| Volume::Local {
                    path: p.into(),
                    block_size: None,
                }),
            })
        }
        "file" | "" => {
            return Ok(match &s.file {
                Some(p) => Volume::Local {
                    path: p.clone(),
                    block_size: Some(512),
                },
                None => Volume::Other,
            })
        }
        "volume" => return Ok(Volume::Other),
        other => {
            return Err(VirError::config_unsupported(&format!(
                "disk type '{other}' is not supported on bare metal (disk {t}): the DPU presents network volumes ({DISK_PROTOCOLS}), block devices and files"
            )))
        }
    }
    let protocol = s.protocol.as_deref().ok_or_else(|| {
        VirError::xml(&format!("missing network source protocol type (disk {t})"))
    })?;
    let name = s.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    let host = s.hosts.first();
    let host_name = host
        .and_then(|h| h.name.as_deref())
        .filter(|n| !n.is_empty());
    let port = |default: Option<u16>| -> VirResult<u16> {
        match host.and_then(|h| h.port.as_deref()) {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| VirError::xml(&format!("invalid port '{p}' in <host> of disk {t}"))),
            None => default.ok_or_else(|| {
                VirError::xml(&format!("<host> of {protocol} disk {t} needs a port"))
            }),
        }
    };
    let need =
        |what: &str| VirError::xml(&format!("{protocol} disk {t} needs {what} in its <source>"));
    match protocol {
        "nvme-tcp" | "nvme-rdma" => {
            let subnqn = name.ok_or_else(|| need("name='<subsystem NQN>'"))?;
            let host = host_name.ok_or_else(|| need("<host name=… port=…/>"))?;
            Ok(Volume::Nvmf {
                transport: protocol.trim_start_matches("nvme-").to_string(),
                subnqn: subnqn.to_string(),
                host: host.to_string(),
                port: port(None)?,
            })
        }
        "iscsi" => {
            let name = name.ok_or_else(|| need("name='<target IQN>/<LUN>'"))?;
            let (iqn, lun) = match name.rsplit_once('/') {
                Some((iqn, lun)) if !lun.is_empty() && lun.bytes().all(|b| b.is_ascii_digit()) => {
                    (iqn, lun.parse::<u32>().map_err(|_| need("a valid LUN"))?)
                }
                _ => (name, 0),
            };
            let host = host_name.ok_or_else(|| need("<host name=…/>"))?;
            Ok(Volume::Iscsi {
                iqn: iqn.to_string(),
                lun,
                host: host.to_string(),
                port: port(Some(3260))?,
            })
        }
        "rbd" => {
            let name = name.ok_or_else(|| need("name='<pool>/<image>'"))?;
            let (pool, image) = name
                .split_once('/')
                .filter(|(p, i)| !p.is_empty() && !i.is_empty())
                .ok_or_else(|| need("name='<pool>/<image>'"))?;
            // No <host> is valid libvirt (QEMU reads ceph.conf); a DPU has no ceph.conf, so
            // SPDK nodes refuse it at start.
            let mut monitors = Vec::new();
            for h in &s.hosts {
                let Some(n) = h.name.as_deref().filter(|n| !n.is_empty()) else {
                    return Err(need("a name in every <host>"));
                };
                let p = match h.port.as_deref() {
                    None => 6789,
                    Some(p) => p.trim().parse::<u16>().map_err(|_| {
                        VirError::xml(&format!("invalid port '{p}' in <host> of disk {t}"))
                    })?,
                };
                monitors.push(if n.contains(':') {
                    format!("[{n}]:{p}")
                } else {
                    format!("{n}:{p}")
                });
            }
            Ok(Volume::Rbd {
                pool: pool.to_string(),
                image: image.to_string(),
                monitors,
            })
        }
        other => Err(VirError::config_unsupported(&format!(
            "disk protocol '{other}' is not supported on bare metal (disk {t}): the DPU connects {DISK_PROTOCOLS} volumes"
        ))),
    }
}

/// An iSCSI LUN named by its udev by-path link,
/// `/dev/disk/by-path/ip-<addr>:<port>-iscsi-<iqn>-lun-<n>` (what os-brick gives nova).
fn by_path_iscsi(path: &str) -> Option<Volume> {
    let rest = path.strip_prefix("/dev/disk/by-path/ip-")?;
    let (portal, rest) = rest.split_once("-iscsi-")?;
    let (iqn, lun) = rest.rsplit_once("-lun-")?;
    let (host, port) = portal.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Volume::Iscsi {
        iqn: iqn.to_string(),
        lun: lun.parse().ok()?,
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}
