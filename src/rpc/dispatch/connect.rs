//! Connection and host procedures: open, close, versions, capabilities, node info, features.

use super::*;
use crate::protocol::xdr::FixedChars;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- connection
        p::AUTH_LIST => ret(AuthListRet { types: vec![0] }),
        p::CONNECT_SUPPORTS_FEATURE => {
            let a: Int = dec(args)?;
            // 9 TYPED_PARAM_STRING, 10 PROGRAM_KEEPALIVE, 14 REMOTE_EVENT_CALLBACK,
            // 15 REMOTE_CLOSE_CALLBACK.
            let yes = matches!(a.v, 9 | 10 | 14 | 15);
            if a.v == 10 {
                c.with(|s| s.keepalive = true);
            }
            ret(Int { v: i32::from(yes) })
        }
        p::CONNECT_OPEN => {
            let a: ConnectOpenArgs = dec(args)?;
            let name = a.name.unwrap_or_default();
            let base = name.split('?').next().unwrap_or("");
            if !matches!(
                base,
                "" | "qemu:///system" | "metal:///system" | "qemu:///session" | "metal:///session"
            ) {
                return Err(VirError::no_connect(&name));
            }
            c.with(|s| {
                if s.opened {
                    return Err(VirError::rpc_internal("connection already open"));
                }
                s.opened = true;
                s.readonly = c.ro_socket || a.flags & 1 != 0;
                Ok(())
            })?;
            void()
        }
        p::CONNECT_CLOSE => {
            c.with(|s| {
                s.callbacks.clear();
                s.close_callback = false;
            });
            void()
        }
        p::CONNECT_GET_TYPE => ret(Str { s: "QEMU".into() }),
        p::CONNECT_GET_VERSION => ret(U64 { v: HV_VERSION }),
        p::CONNECT_GET_LIB_VERSION => ret(U64 { v: LIB_VERSION }),
        p::CONNECT_GET_HOSTNAME => ret(Str {
            s: d.hostname().to_string(),
        }),
        p::CONNECT_GET_URI => ret(Str {
            s: "qemu:///system".into(),
        }),
        p::CONNECT_IS_SECURE => ret(Int {
            v: i32::from(c.peer.secure()),
        }),
        p::CONNECT_GET_MAX_VCPUS => {
            let a: GetMaxVcpusArgs = dec(args)?;
            if let Some(t) = a.type_.as_deref() {
                if !t.eq_ignore_ascii_case("kvm") && !t.eq_ignore_ascii_case("qemu") {
                    return Err(VirError::invalid_arg(&format!("unknown type '{t}'")));
                }
            }
            ret(Int {
                v: host::max_vcpus(d) as i32,
            })
        }
        p::CONNECT_GET_CAPABILITIES => ret(Str {
            s: host::capabilities(d),
        }),
        p::CONNECT_GET_DOMAIN_CAPABILITIES => {
            let a: GetDomainCapsArgs = dec(args)?;
            VirError::check_flags(a.flags, 1, "virConnectGetDomainCapabilities")?;
            ret(Str {
                s: host::domain_capabilities(
                    d,
                    a.arch.as_deref(),
                    a.machine.as_deref(),
                    a.virttype.as_deref(),
                )?,
            })
        }
        p::CONNECT_GET_SYSINFO => {
            let a: Flags = dec(args)?;
            VirError::check_flags(a.flags, 0, "virConnectGetSysinfo")?;
            ret(Str {
                s: host::sysinfo(d),
            })
        }
        p::NODE_GET_INFO => {
            let i = host::node_info(d);
            ret(NodeGetInfoRet {
                model: FixedChars(i.model),
                memory: i.memory,
                cpus: i.cpus,
                mhz: i.mhz,
                nodes: i.nodes,
                sockets: i.sockets,
                cores: i.cores,
                threads: i.threads,
            })
        }
        p::NODE_GET_CPU_MAP => {
            let a: NodeGetCpuMapArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virNodeGetCPUMap")?;
            let n = host::total_cpus(d);
            let cpumap = if a.need_map != 0 {
                let mut m = vec![0u8; n.div_ceil(8) as usize];
                for i in 0..n as usize {
                    m[i / 8] |= 1 << (i % 8);
                }
                m
            } else {
                Vec::new()
            };
            ret(NodeGetCpuMapRet {
                cpumap: Opaque(cpumap),
                online: if a.need_online != 0 { n } else { 0 },
                ret: n as i32,
            })
        }
        p::NODE_GET_CPU_STATS => {
            let a: NodeGetCpuStatsArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virNodeGetCPUStats")?;
            let stats = host::cpu_stats(d, a.cpu_num)?;
            let n = stats.len() as i32;
            if a.nparams == 0 {
                return ret(NodeGetCpuStatsRet {
                    params: vec![],
                    nparams: n,
                });
            }
            let params = stats
                .into_iter()
                .take(a.nparams.max(0) as usize)
                .map(|(field, value)| NodeCpuStat {
                    field: field.into(),
                    value,
                })
                .collect();
            ret(NodeGetCpuStatsRet { params, nparams: n })
        }
        p::NODE_GET_FREE_MEMORY => ret(U64 {
            v: host::free_memory_bytes(d),
        }),
        p::NODE_GET_CELLS_FREE_MEMORY => {
            let a: NodeGetCellsFreeMemoryArgs = dec(args)?;
            ret(NodeGetCellsFreeMemoryRet {
                cells: host::cells_free_memory(d, a.start_cell, a.maxcells)?,
            })
        }
        p::NODE_GET_SECURITY_MODEL => ret(NodeGetSecurityModelRet {
            model: CharArray(String::new()),
            doi: CharArray(String::new()),
        }),
        p::CONNECT_REGISTER_CLOSE_CALLBACK => {
            c.with(|s| s.close_callback = true);
            void()
        }
        p::CONNECT_UNREGISTER_CLOSE_CALLBACK => {
            c.with(|s| s.close_callback = false);
            void()
        }
        // ---------------------------------------------------------------- CPU models
        p::CONNECT_GET_CPU_MODEL_NAMES => {
            let a: CpuModelNamesArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virConnectGetCPUModelNames")?;
            let models = host::cpu::model_names(d, &a.arch)?;
            let n = models.len() as i32;
            ret(CpuModelNamesRet {
                models: if a.need_results != 0 {
                    models
                } else {
                    Vec::new()
                },
                ret: n,
            })
        }
        p::CONNECT_COMPARE_CPU => {
            let a: XmlFlags = dec(args)?;
            ret(Int {
                v: host::cpu::compare(d, &a.xml, a.flags, "virConnectCompareCPU")?,
            })
        }
        p::CONNECT_COMPARE_HYPERVISOR_CPU => {
            let a: CompareHypervisorCpuArgs = dec(args)?;
            host::domain_capabilities(
                d,
                a.arch.as_deref(),
                a.machine.as_deref(),
                a.virttype.as_deref(),
            )?;
            ret(Int {
                v: host::cpu::compare(d, &a.xml_cpu, a.flags, "virConnectCompareHypervisorCPU")?,
            })
        }
        p::CONNECT_BASELINE_CPU => {
            let a: BaselineCpuArgs = dec(args)?;
            text(host::cpu::baseline(
                &a.xml_cpus,
                a.flags,
                "virConnectBaselineCPU",
            )?)
        }
        p::CONNECT_BASELINE_HYPERVISOR_CPU => {
            let a: BaselineHypervisorCpuArgs = dec(args)?;
            host::domain_capabilities(
                d,
                a.arch.as_deref(),
                a.machine.as_deref(),
                a.virttype.as_deref(),
            )?;
            text(host::cpu::baseline(
                &a.xml_cpus,
                a.flags,
                "virConnectBaselineHypervisorCPU",
            )?)
        }
        _ => Err(unhandled(proc_)),
    }
}
