//! Domain queries and settings: info, state, XML, autostart, metadata, messages, statistics.

use super::*;

/// `REMOTE_DOMAIN_LIST_MAX`.
const LIST_MAX: usize = 16384;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- domain queries
        p::DOMAIN_GET_XML_DESC => {
            let a: DomFlags = dec(args)?;
            if c.with(|s| s.readonly) && a.flags & (1 | 8) != 0 {
                return Err(VirError::operation_denied(
                    "virDomainGetXMLDesc with secure flag",
                ));
            }
            let o = dom(c, &a.dom)?;
            text(d.xml_desc(&o, a.flags)?)
        }
        p::DOMAIN_GET_INFO => {
            let a: Dom = dec(args)?;
            let o = dom(c, &a.dom)?;
            ret(o.with(|s| DomainGetInfoRet {
                state: s.state().code() as u32,
                max_mem: s.def.memory_kib(),
                memory: s.def.current_memory_kib(),
                nr_virt_cpu: s.def.current_vcpus(),
                cpu_time: 0,
            }))
        }
        p::DOMAIN_GET_STATE => {
            let a: DomFlags = dec(args)?;
            VirError::check_flags(a.flags, 0, "virDomainGetState")?;
            let o = dom(c, &a.dom)?;
            ret(o.with(|s| DomainGetStateRet {
                state: s.state().code(),
                reason: s.state().reason_code(),
            }))
        }
        p::DOMAIN_GET_OS_TYPE => {
            let a: Dom = dec(args)?;
            let o = dom(c, &a.dom)?;
            ret(Str {
                s: o.with(|s| s.def.os_type().to_string()),
            })
        }
        p::DOMAIN_GET_MAX_MEMORY => {
            let a: Dom = dec(args)?;
            let o = dom(c, &a.dom)?;
            ret(U64 {
                v: o.with(|s| s.def.memory_kib()),
            })
        }
        p::DOMAIN_GET_MAX_VCPUS => {
            let a: Dom = dec(args)?;
            let o = dom(c, &a.dom)?;
            o.with(|s| {
                if !s.active() {
                    return Err(VirError::operation_invalid("domain is not running"));
                }
                Ok(Int {
                    v: s.def.max_vcpus() as i32,
                })
            })
            .map(|v| to_bytes(&v))
        }
        p::DOMAIN_GET_VCPUS => {
            let a: DomainGetVcpusArgs = dec(args)?;
            let o = dom(c, &a.dom)?;
            if a.maxinfo < 0 || a.maplen < 0 || a.maxinfo > 16384 || a.maplen > 2048 {
                return Err(VirError::rpc("maxinfo or maplen out of range"));
            }
            let (n, node) = d.vcpus(&o)?;
            let first = node.map(|n| host::first_cpu_of(d, &n)).unwrap_or(0);
            let count = (n as i32).min(a.maxinfo);
            let mut info = Vec::new();
            let mut maps = vec![0u8; (count * a.maplen) as usize];
            for i in 0..count {
                let cpu = first + i as u32;
                info.push(VcpuInfo {
                    number: i as u32,
                    state: 1,
                    cpu_time: 0,
                    cpu: cpu as i32,
                });
                let byte = (cpu / 8) as i32;
                if byte < a.maplen {
                    maps[(i * a.maplen + byte) as usize] |= 1 << (cpu % 8);
                }
            }
            ret(DomainGetVcpusRet {
                info,
                cpumaps: Opaque(maps),
            })
        }
        p::DOMAIN_GET_AUTOSTART => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(c, &a.dom)?.with(|s| s.autostart)),
            })
        }
        p::DOMAIN_SET_AUTOSTART => {
            let a: DomainSetAutostartArgs = dec(args)?;
            d.set_autostart(&dom(c, &a.dom)?, a.autostart != 0).await?;
            void()
        }
        p::DOMAIN_IS_ACTIVE => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(c, &a.dom)?.with(|s| s.active())),
            })
        }
        p::DOMAIN_IS_UPDATED => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(c, &a.dom)?.with(|s| s.active() && s.updated)),
            })
        }
        p::DOMAIN_IS_PERSISTENT => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(c, &a.dom)?.with(|s| s.persistent)),
            })
        }
        p::DOMAIN_HAS_MANAGED_SAVE_IMAGE => {
            let a: DomFlags = dec(args)?;
            dom(c, &a.dom)?;
            ret(Int { v: 0 })
        }
        p::DOMAIN_SNAPSHOT_NUM => {
            let a: DomFlags = dec(args)?;
            dom(c, &a.dom)?;
            ret(Int { v: 0 })
        }
        p::DOMAIN_GET_JOB_INFO => {
            let a: Dom = dec(args)?;
            let o = dom(c, &a.dom)?;
            if !o.with(|s| s.active()) {
                return Err(VirError::operation_invalid("domain is not running"));
            }
            ret(DomainGetJobInfoRet::default())
        }
        p::DOMAIN_GET_JOB_STATS => {
            let a: DomFlags = dec(args)?;
            dom(c, &a.dom)?;
            ret(DomainGetJobStatsRet {
                type_: 0,
                params: vec![],
            })
        }
        p::DOMAIN_GET_MESSAGES => {
            let a: DomFlags = dec(args)?;
            VirError::check_flags(a.flags, 3, "virDomainGetMessages")?;
            let o = dom(c, &a.dom)?;
            let msgs = d.messages(&o);
            ret(DomainGetMessagesRet { msgs })
        }
        p::DOMAIN_MEMORY_STATS => {
            let a: DomainMemoryStatsArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virDomainMemoryStats")?;
            let stats = d.memory_stats(&dom(c, &a.dom)?)?;
            let mut w = Vec::new();
            let n = stats.len().min(a.max_stats as usize);
            (n as u32).encode(&mut w);
            for (tag, val) in stats.into_iter().take(n) {
                tag.encode(&mut w);
                val.encode(&mut w);
            }
            Ok(w)
        }
        // ---------------------------------------------------------------- statistics
        p::CONNECT_GET_ALL_DOMAIN_STATS => {
            let a: GetAllDomainStatsArgs = dec(args)?;
            if a.doms.len() > LIST_MAX {
                return Err(VirError::rpc(&format!(
                    "too many domains '{}' for limit '{LIST_MAX}'",
                    a.doms.len()
                )));
            }
            // virDomainListGetStats: the named domains that still exist (libvirt skips the
            // ones that went away).
            let named = (!a.doms.is_empty()).then(|| {
                a.doms
                    .iter()
                    .filter_map(|w| d.lookup_uuid(&Uuid::from_bytes(w.uuid)).ok())
                    .collect()
            });
            let records = d.domain_stats(named, a.stats, a.flags).await?;
            if records.len() > LIST_MAX {
                return Err(VirError::rpc(&format!(
                    "too many domains '{}' for limit '{LIST_MAX}'",
                    records.len()
                )));
            }
            ret(GetAllDomainStatsRet {
                ret_stats: records
                    .into_iter()
                    .map(|(r, params)| DomainStatsRecord {
                        dom: wire(&r),
                        params: typed_params(params),
                    })
                    .collect(),
            })
        }
        // ---------------------------------------------------------------- guest time
        // libvirt asks the guest agent; a bare-metal server has no agent channel. nova reads
        // VIR_ERR_OPERATION_UNSUPPORTED as "no agent" and goes on.
        p::DOMAIN_GET_TIME => {
            let a: DomFlags = dec(args)?;
            VirError::check_flags(a.flags, 0, "virDomainGetTime")?;
            d.require_running(&*dom(c, &a.dom)?)?;
            Err(unsupported_op(
                "reading the guest's clock (there is no guest agent)",
            ))
        }
        p::DOMAIN_SET_TIME => {
            let a: DomainSetTimeArgs = dec(args)?;
            // VIR_DOMAIN_TIME_SYNC.
            VirError::check_flags(a.flags, 1, "virDomainSetTime")?;
            d.require_running(&*dom(c, &a.dom)?)?;
            Err(unsupported_op(
                "setting the guest's clock (there is no guest agent)",
            ))
        }
        _ => Err(unhandled(proc_)),
    }
}
