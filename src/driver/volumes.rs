//! Where a disk's data lives, as the backends need it: the domain XML's `<disk>` (pure data,
//! `domain/`) turned into a backend [`Volume`]. Here, above both, so neither knows the other.

use crate::backend::{Qos, Volume};
use crate::domain::devices::{DiskDef, IoTune};
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
/// A disk's `<iotune>` as the disk backend's QoS takes it (`None`: no limit), exactly: SPDK
/// limits I/Os per second for reads and writes together, in multiples of 1000, and bytes
/// per second in whole MiB for both, reads and writes. What it cannot represent exactly is
/// refused with `VIR_ERR_CONFIG_UNSUPPORTED` naming the field, rather than rounded behind the
/// user's back; a field that is not a number, or a total with its read/write limits, is
/// `VIR_ERR_XML_ERROR` as in libvirt.
pub fn disk_qos(target: &str, t: &IoTune) -> VirResult<Option<Qos>> {
    if let Some(f) = t.invalid {
        return Err(VirError::xml(&format!(
            "disk iotune field '{f}' must be an integer"
        )));
    }
    if let Some(c) = t.conflict() {
        return Err(VirError::xml(&c));
    }
    let refuse = |field: &str, why: &str| {
        Err(VirError::config_unsupported(&format!(
            "disk {target}: iotune {field} {why}"
        )))
    };
    for f in ["read_iops_sec", "write_iops_sec"] {
        if t.get(f) != 0 {
            return refuse(
                f,
                "cannot be applied: the DPU's SPDK limits read and write I/Os together only (use total_iops_sec)",
            );
        }
    }
    for f in crate::domain::devices::IOTUNE_FIELDS {
        if (f.ends_with("_max") || f.ends_with("_max_length") || *f == "size_iops_sec")
            && t.get(f) != 0
        {
            return refuse(
                f,
                "cannot be applied: the DPU's SPDK has no bursts or I/O size accounting",
            );
        }
    }
    if t.group_name.is_some() {
        return refuse(
            "group_name",
            "cannot be applied: the DPU's SPDK limits each disk on its own",
        );
    }
    let iops = t.get("total_iops_sec");
    if iops % 1000 != 0 {
        return refuse(
            "total_iops_sec",
            &format!("{iops} cannot be applied exactly: the DPU's SPDK takes multiples of 1000 I/Os per second"),
        );
    }
    let mib = |f: &str| -> VirResult<u64> {
        let v = t.get(f);
        if v % (1 << 20) != 0 {
            return Err(VirError::config_unsupported(&format!(
                "disk {target}: iotune {f} {v} cannot be applied exactly: the DPU's SPDK takes whole MiB per second (multiples of 1048576 bytes)"
            )));
        }
        Ok(v >> 20)
    };
    let q = Qos {
        rw_ios_per_sec: iops,
        rw_mbytes_per_sec: mib("total_bytes_sec")?,
        r_mbytes_per_sec: mib("read_bytes_sec")?,
        w_mbytes_per_sec: mib("write_bytes_sec")?,
    };
    Ok((!q.is_unlimited()).then_some(q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn tune(fields: &[(&str, u64)]) -> IoTune {
        let mut t = IoTune::default();
        for (f, v) in fields {
            assert!(t.set(f, *v));
        }
        t
    }

    #[test]
    fn iotune_converts_exactly_or_is_refused_naming_the_field() {
        let q = disk_qos(
            "vda",
            &tune(&[
                ("total_iops_sec", 20_000),
                ("read_bytes_sec", 3 << 20),
                ("write_bytes_sec", 1 << 20),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            q,
            Qos {
                rw_ios_per_sec: 20_000,
                rw_mbytes_per_sec: 0,
                r_mbytes_per_sec: 3,
                w_mbytes_per_sec: 1
            }
        );
        assert_eq!(disk_qos("vda", &IoTune::default()).unwrap(), None);
        for (field, value) in [
            ("total_iops_sec", 1500),
            ("total_bytes_sec", 1_000_000),
            ("read_iops_sec", 1000),
            ("write_iops_sec", 1000),
            ("total_iops_sec_max", 1000),
            ("size_iops_sec", 4096),
        ] {
            let e = disk_qos("vda", &tune(&[(field, value)])).unwrap_err();
            assert_eq!(e.code, code::CONFIG_UNSUPPORTED, "{field}");
            assert!(e.message.contains(field), "{e}");
        }
        let e = disk_qos(
            "vda",
            &tune(&[("total_bytes_sec", 1 << 20), ("read_bytes_sec", 1 << 20)]),
        )
        .unwrap_err();
        assert_eq!(e.code, code::XML_ERROR);
        let bad = IoTune {
            invalid: Some("total_iops_sec"),
            ..IoTune::default()
        };
        assert!(disk_qos("vda", &bad)
            .unwrap_err()
            .message
            .contains("disk iotune field 'total_iops_sec' must be an integer"));
    }
}
