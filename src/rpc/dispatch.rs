//! Procedure dispatch: decode args, check access, call the driver, encode the result.
//! This is the only place driver results become wire structs.

use std::sync::Arc;

use uuid::Uuid;

use super::client::{Callback, Client};
use crate::driver::{DomRef, DomainObj};
use crate::error::{code, from, VirError, VirResult};
use crate::events;
use crate::host;
use crate::protocol::header::{HEADER_LEN, MESSAGE_MAX};
use crate::protocol::procs::{self as p, Access};
use crate::protocol::types::*;
use crate::protocol::xdr::{from_bytes, to_bytes, CharArray, Opaque, Xdr, STRING_MAX};

/// libvirt version we claim (`virConnectGetLibVersion`): 10.0.0.
pub const LIB_VERSION: u64 = 10_000_000;
/// Hypervisor version we claim (`virConnectGetVersion`): 8.2.2, nova's recommended minimum.
pub const HV_VERSION: u64 = 8_002_002;

fn dec<T: Xdr>(b: &[u8]) -> VirResult<T> {
    from_bytes(b).map_err(|e| {
        tracing::debug!("undecodable arguments: {e}");
        VirError::rpc("Unable to decode message payload")
    })
}

/// Encodes a reply, refusing one larger than a packet may be (`VIR_NET_MESSAGE_MAX`), as
/// libvirtd's encoder does.
fn ret<T: Xdr>(v: T) -> VirResult<Vec<u8>> {
    let b = to_bytes(&v);
    if b.len() > MESSAGE_MAX - HEADER_LEN {
        return Err(VirError::rpc(&format!(
            "Unable to encode message payload: reply of {} bytes exceeds the protocol limit of {MESSAGE_MAX}",
            b.len()
        )));
    }
    Ok(b)
}

/// A string reply (an XML document, metadata), refused past `REMOTE_STRING_MAX`.
fn text(s: String) -> VirResult<Vec<u8>> {
    if s.len() > STRING_MAX {
        return Err(VirError::rpc(&format!(
            "Unable to encode message payload: a string of {} bytes exceeds the protocol limit of {STRING_MAX}",
            s.len()
        )));
    }
    ret(Str { s })
}

fn void() -> VirResult<Vec<u8>> {
    Ok(Vec::new())
}

fn wire(r: &DomRef) -> Domain {
    Domain {
        name: r.name.clone(),
        uuid: *r.uuid.as_bytes(),
        id: r.id,
    }
}

fn secret_wire(r: &crate::secrets::SecretRef) -> Secret {
    Secret {
        uuid: *r.uuid.as_bytes(),
        usage_type: r.usage_type,
        usage_id: r.usage_id.clone(),
    }
}

/// Records a run started with `VIR_DOMAIN_START_AUTODESTROY` on this connection.
fn remember_autodestroy(c: &Client, flags: u32, r: &DomRef) {
    if flags & 2 != 0 {
        c.with(|s| s.autodestroy.push((r.uuid, r.id)));
    }
}

/// An argument check of libvirt's public API (code 8, domain DOMAIN, no prefix).
fn api_arg(msg: &str) -> VirError {
    VirError::new(code::INVALID_ARG, from::DOMAIN, msg)
}

/// An internal error as libvirtd's RPC layer raises it (code 1, domain RPC).
fn rpc_internal(detail: &str) -> VirError {
    VirError::new(
        code::INTERNAL_ERROR,
        from::RPC,
        format!("internal error: {detail}"),
    )
}

fn unsupported_op(what: &str) -> VirError {
    VirError::operation_unsupported(&format!("{what} is not possible for a bare-metal server"))
}

/// Procedures that change something (or reveal a secret): each gets an audit line. Two
/// `Write`-class procedures of libvirt's ACL table only read and are left out.
fn audited(info: &p::ProcInfo) -> bool {
    info.access == Access::Write
        && !matches!(
            info.num,
            p::CONNECT_GET_HOSTNAME | p::CONNECT_GET_DOMAIN_CAPABILITIES
        )
}

/// The object a mutating call was about, for its audit line: the domain or secret its
/// arguments start with, else the one its reply starts with (defines and creates).
fn audit_object(api: &str, args: &[u8], reply: Option<&[u8]>) -> String {
    fn prefix<T: Xdr>(b: &[u8]) -> Option<T> {
        T::decode(&mut crate::protocol::xdr::Reader::new(b)).ok()
    }
    let from_reply = api.ends_with("XML") || api.ends_with("XMLFlags");
    let src = if from_reply { reply } else { Some(args) };
    let Some(b) = src else {
        return String::new();
    };
    if api.starts_with("virDomain") {
        prefix::<Domain>(b)
            .map(|d| format!("domain '{}'", d.name))
            .unwrap_or_default()
    } else if api.starts_with("virSecret") {
        prefix::<Secret>(b)
            .map(|s| format!("secret {}", Uuid::from_bytes(s.uuid)))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// Handles one call. Returns the encoded ret payload or the error to send. Mutating calls
/// leave an audit line (target `metalvirt::audit`): who, what, on which object, result.
pub async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let r = call_inner(c, proc_, args).await;
    let enabled = tracing::enabled!(target: "metalvirt::audit", tracing::Level::INFO);
    if let Some(info) = p::info(proc_).filter(|i| enabled && audited(i)) {
        let object = audit_object(info.api, args, r.as_ref().ok().map(|v| v.as_slice()));
        let (code, outcome) = match &r {
            Ok(_) => (0, "ok".to_string()),
            Err(e) => (e.code, format!("refused: {}", e.message)),
        };
        tracing::info!(
            target: "metalvirt::audit",
            client = c.id,
            peer = %c.peer,
            call = info.api,
            object = %object,
            code,
            "{outcome}"
        );
    }
    r
}

async fn call_inner(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let Some(info) = p::info(proc_) else {
        return Err(VirError::rpc(&format!("unknown procedure: {proc_}")));
    };
    let (opened, readonly) = c.with(|s| (s.opened, s.readonly));
    if !opened && !info.before_open {
        return Err(VirError::new(
            code::INTERNAL_ERROR,
            from::RPC,
            "internal error: hypervisor connection not open",
        ));
    }
    if readonly && info.access == Access::Write {
        return Err(VirError::read_only(info.api));
    }
    if let Some(what) = p::impossible(proc_) {
        return Err(unsupported_op(what));
    }
    let d = &c.driver;
    let dom =
        |w: &Domain| -> VirResult<Arc<DomainObj>> { d.get(&Uuid::from_bytes(w.uuid), &w.name) };
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
                return Err(VirError::new(
                    code::NO_CONNECT,
                    from::NONE,
                    format!("no connection driver available for {name}"),
                ));
            }
            c.with(|s| {
                if s.opened {
                    return Err(VirError::new(
                        code::INTERNAL_ERROR,
                        from::RPC,
                        "internal error: connection already open",
                    ));
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
        p::NODE_GET_INFO => ret(host::node_info(d)),
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
            let params = stats.into_iter().take(a.nparams.max(0) as usize).collect();
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

        // ---------------------------------------------------------------- events
        p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => {
            let a: EventCallbackRegisterAnyArgs = dec(args)?;
            if !(0..events::id::LAST).contains(&a.event_id) {
                return Err(rpc_internal(&format!(
                    "unsupported event ID {}",
                    a.event_id
                )));
            }
            let filter = match a.dom {
                Some(w) => Some(dom(&w)?.uuid),
                None => None,
            };
            let id = c.with(|s| {
                let id = s.next_callback;
                s.next_callback += 1;
                s.callbacks.insert(
                    id,
                    Callback {
                        event_id: a.event_id,
                        dom: filter,
                        legacy: false,
                    },
                );
                id
            });
            c.ensure_event_forwarding();
            ret(EventCallbackRegisterAnyRet { callback_id: id })
        }
        p::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY => {
            let a: EventCallbackDeregisterAnyArgs = dec(args)?;
            c.with(|s| s.callbacks.remove(&a.callback_id))
                .ok_or_else(|| {
                    rpc_internal(&format!(
                        "domain event callback {} not registered",
                        a.callback_id
                    ))
                })?;
            void()
        }
        p::CONNECT_DOMAIN_EVENT_REGISTER_ANY => {
            let a: EventRegisterAnyArgs = dec(args)?;
            // libvirtd accepts ids 0..15 on the legacy procedure; metalvirt delivers lifecycle,
            // reboot and device-removed events through it.
            if !(0..16).contains(&a.event_id) {
                return Err(rpc_internal(&format!(
                    "unsupported event ID {}",
                    a.event_id
                )));
            }
            c.with(|s| {
                if s.callbacks.values().any(|cb| cb.event_id == a.event_id) {
                    return Err(VirError::new(
                        code::INVALID_ARG,
                        from::NONE,
                        "invalid argument: event callback already tracked",
                    ));
                }
                let id = s.next_callback;
                s.next_callback += 1;
                s.callbacks.insert(
                    id,
                    Callback {
                        event_id: a.event_id,
                        dom: None,
                        legacy: true,
                    },
                );
                Ok(())
            })?;
            c.ensure_event_forwarding();
            void()
        }
        p::CONNECT_DOMAIN_EVENT_DEREGISTER_ANY => {
            let a: EventRegisterAnyArgs = dec(args)?;
            c.with(|s| {
                let id = s
                    .callbacks
                    .iter()
                    .find(|(_, cb)| cb.legacy && cb.event_id == a.event_id)
                    .map(|(id, _)| *id);
                match id {
                    Some(id) => {
                        s.callbacks.remove(&id);
                        Ok(())
                    }
                    None => Err(rpc_internal(&format!(
                        "domain event {} not registered",
                        a.event_id
                    ))),
                }
            })?;
            void()
        }

        // ---------------------------------------------------------------- lookups, lists
        p::DOMAIN_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_name(&a.s)?.dom_ref()),
            })
        }
        p::DOMAIN_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_uuid(&Uuid::from_bytes(a.uuid))?.dom_ref()),
            })
        }
        p::DOMAIN_LOOKUP_BY_ID => {
            let a: Int = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_id(a.v)?.dom_ref()),
            })
        }
        p::CONNECT_LIST_ALL_DOMAINS => {
            let a: ListAllDomainsArgs = dec(args)?;
            let mut list = d.list_all(a.flags)?;
            if list.len() > 16384 {
                return Err(VirError::rpc(&format!(
                    "too many domains '{}' for limit '16384'",
                    list.len()
                )));
            }
            let n = list.len() as u32;
            if a.need_results == 0 {
                list.clear();
            }
            ret(ListAllDomainsRet {
                domains: list.iter().map(wire).collect(),
                ret: n,
            })
        }
        p::CONNECT_NUM_OF_DOMAINS => ret(Int {
            v: d.active_ids().len() as i32,
        }),
        p::CONNECT_LIST_DOMAINS => {
            let a: Int = dec(args)?;
            if a.v < 0 || a.v > 16384 {
                return Err(VirError::rpc("maxids > REMOTE_DOMAIN_LIST_MAX"));
            }
            let mut ids = d.active_ids();
            ids.truncate(a.v as usize);
            ret(ListIdsRet { ids })
        }
        p::CONNECT_NUM_OF_DEFINED_DOMAINS => ret(Int {
            v: d.inactive_names().len() as i32,
        }),
        p::CONNECT_LIST_DEFINED_DOMAINS => {
            let a: Int = dec(args)?;
            if a.v < 0 || a.v > 16384 {
                return Err(VirError::rpc("maxnames > REMOTE_DOMAIN_LIST_MAX"));
            }
            let mut names = d.inactive_names();
            names.truncate(a.v as usize);
            ret(ListNamesRet { names })
        }

        // ---------------------------------------------------------------- define / start / stop
        p::DOMAIN_DEFINE_XML => {
            let a: Str = dec(args)?;
            ret(Dom {
                dom: wire(&d.define_xml(&a.s, 0).await?),
            })
        }
        p::DOMAIN_DEFINE_XML_FLAGS => {
            let a: XmlFlags = dec(args)?;
            ret(Dom {
                dom: wire(&d.define_xml(&a.xml, a.flags).await?),
            })
        }
        p::DOMAIN_CREATE_XML => {
            let a: XmlFlags = dec(args)?;
            let r = d.create_xml(&a.xml, a.flags).await?;
            remember_autodestroy(c, a.flags, &r);
            ret(Dom { dom: wire(&r) })
        }
        p::DOMAIN_CREATE => {
            let a: Dom = dec(args)?;
            d.create(&dom(&a.dom)?, 0).await?;
            void()
        }
        p::DOMAIN_CREATE_WITH_FLAGS => {
            let a: DomFlags = dec(args)?;
            let r = d.create(&dom(&a.dom)?, a.flags).await?;
            remember_autodestroy(c, a.flags, &r);
            ret(Dom { dom: wire(&r) })
        }
        p::DOMAIN_DESTROY => {
            let a: Dom = dec(args)?;
            d.destroy(&dom(&a.dom)?, 0).await?;
            void()
        }
        p::DOMAIN_DESTROY_FLAGS => {
            let a: DomFlags = dec(args)?;
            d.destroy(&dom(&a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_SHUTDOWN => {
            let a: Dom = dec(args)?;
            d.shutdown(&dom(&a.dom)?, 0).await?;
            void()
        }
        p::DOMAIN_SHUTDOWN_FLAGS => {
            let a: DomFlags = dec(args)?;
            d.shutdown(&dom(&a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_REBOOT => {
            let a: DomFlags = dec(args)?;
            d.reboot(&dom(&a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_RESET => {
            let a: DomFlags = dec(args)?;
            d.reset(&dom(&a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_RESUME => {
            let a: Dom = dec(args)?;
            d.resume(&dom(&a.dom)?).await?;
            void()
        }
        p::DOMAIN_UNDEFINE => {
            let a: Dom = dec(args)?;
            d.undefine(&dom(&a.dom)?, 0).await?;
            void()
        }
        p::DOMAIN_UNDEFINE_FLAGS => {
            let a: DomFlags = dec(args)?;
            d.undefine(&dom(&a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_SUSPEND => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
            match o.with(|s| s.state()) {
                crate::driver::state::DomainState::Paused(_) => void(),
                s if s.is_active() => Err(unsupported_op("suspending (pausing the CPUs of)")),
                _ => Err(VirError::operation_invalid("domain is not running")),
            }
        }
        p::DOMAIN_SAVE => {
            let a: DomainSaveArgs = dec(args)?;
            dom(&a.dom)?;
            Err(unsupported_op("saving the memory state"))
        }
        p::DOMAIN_SAVE_FLAGS => {
            let a: DomainSaveFlagsArgs = dec(args)?;
            dom(&a.dom)?;
            Err(unsupported_op("saving the memory state"))
        }
        p::DOMAIN_MANAGED_SAVE => {
            let a: DomFlags = dec(args)?;
            dom(&a.dom)?;
            Err(unsupported_op("managed save of the memory state"))
        }
        p::DOMAIN_SNAPSHOT_CREATE_XML => {
            let a: DomainSnapshotCreateXmlArgs = dec(args)?;
            dom(&a.dom)?;
            Err(unsupported_op("a snapshot"))
        }
        p::DOMAIN_MANAGED_SAVE_REMOVE => {
            let a: DomFlags = dec(args)?;
            dom(&a.dom)?;
            VirError::check_flags(a.flags, 0, "virDomainManagedSaveRemove")?;
            void()
        }

        // ---------------------------------------------------------------- domain queries
        p::DOMAIN_GET_XML_DESC => {
            let a: DomFlags = dec(args)?;
            if readonly && a.flags & (1 | 8) != 0 {
                return Err(VirError::new(
                    code::OPERATION_DENIED,
                    from::DOMAIN,
                    "operation forbidden: virDomainGetXMLDesc with secure flag",
                ));
            }
            let o = dom(&a.dom)?;
            text(d.xml_desc(&o, a.flags)?)
        }
        p::DOMAIN_GET_INFO => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
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
            let o = dom(&a.dom)?;
            ret(o.with(|s| DomainGetStateRet {
                state: s.state().code(),
                reason: s.state().reason_code(),
            }))
        }
        p::DOMAIN_GET_OS_TYPE => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
            ret(Str {
                s: o.with(|s| s.def.os_type().to_string()),
            })
        }
        p::DOMAIN_GET_MAX_MEMORY => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
            ret(U64 {
                v: o.with(|s| s.def.memory_kib()),
            })
        }
        p::DOMAIN_GET_MAX_VCPUS => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
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
            let o = dom(&a.dom)?;
            if a.maxinfo < 0 || a.maplen < 0 || a.maxinfo > 16384 || a.maplen > 2048 {
                return Err(VirError::rpc("maxinfo or maplen out of range"));
            }
            let (active, n, node) = o.with(|s| (s.active(), s.def.current_vcpus(), s.node.clone()));
            if !active {
                return Err(VirError::operation_invalid(
                    "cannot list vcpus for an inactive domain",
                ));
            }
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
                v: i32::from(dom(&a.dom)?.with(|s| s.autostart)),
            })
        }
        p::DOMAIN_SET_AUTOSTART => {
            let a: DomainSetAutostartArgs = dec(args)?;
            d.set_autostart(&dom(&a.dom)?, a.autostart != 0).await?;
            void()
        }
        p::DOMAIN_IS_ACTIVE => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(&a.dom)?.with(|s| s.active())),
            })
        }
        p::DOMAIN_IS_UPDATED => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(&a.dom)?.with(|s| s.active() && s.updated)),
            })
        }
        p::DOMAIN_IS_PERSISTENT => {
            let a: Dom = dec(args)?;
            ret(Int {
                v: i32::from(dom(&a.dom)?.with(|s| s.persistent)),
            })
        }
        p::DOMAIN_HAS_MANAGED_SAVE_IMAGE => {
            let a: DomFlags = dec(args)?;
            dom(&a.dom)?;
            ret(Int { v: 0 })
        }
        p::DOMAIN_SNAPSHOT_NUM => {
            let a: DomFlags = dec(args)?;
            dom(&a.dom)?;
            ret(Int { v: 0 })
        }
        p::DOMAIN_GET_JOB_INFO => {
            let a: Dom = dec(args)?;
            let o = dom(&a.dom)?;
            if !o.with(|s| s.active()) {
                return Err(VirError::operation_invalid("domain is not running"));
            }
            ret(DomainGetJobInfoRet::default())
        }
        p::DOMAIN_GET_JOB_STATS => {
            let a: DomFlags = dec(args)?;
            dom(&a.dom)?;
            ret(DomainGetJobStatsRet {
                type_: 0,
                params: vec![],
            })
        }
        p::DOMAIN_GET_MESSAGES => {
            let a: DomFlags = dec(args)?;
            VirError::check_flags(a.flags, 3, "virDomainGetMessages")?;
            let o = dom(&a.dom)?;
            let (mut msgs, node) = o.with(|s| (s.messages.clone(), s.node.clone()));
            if let Some(n) = node.and_then(|n| d.nodes().iter().find(|x| x.spec.name == n)) {
                let sim = n.spec.simulated;
                let note = if sim.all() {
                    Some(format!(
                        "runs on {} of the SIMULATED lab: no real server is powered, no disk or NIC is really mapped",
                        n.spec.name
                    ))
                } else {
                    sim.sentence()
                        .map(|s| format!("runs on {} ({}): its {s}", n.spec.name, n.spec.bmc_desc))
                };
                if let Some(note) = note {
                    msgs.insert(0, note);
                }
            }
            ret(DomainGetMessagesRet { msgs })
        }
        p::DOMAIN_MEMORY_STATS => {
            let a: DomainMemoryStatsArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virDomainMemoryStats")?;
            let o = dom(&a.dom)?;
            if !o.with(|s| s.active()) {
                return Err(VirError::operation_invalid("domain is not running"));
            }
            // Bare metal has no balloon: report the actual (installed = defined) memory only.
            let actual = o.with(|s| s.def.current_memory_kib());
            let stats: Vec<(i32, u64)> = vec![(6, actual)];
            let mut w = Vec::new();
            let n = stats.len().min(a.max_stats as usize);
            (n as u32).encode(&mut w);
            for (tag, val) in stats.into_iter().take(n) {
                tag.encode(&mut w);
                val.encode(&mut w);
            }
            Ok(w)
        }
        // ---------------------------------------------------------------- devices
        p::DOMAIN_ATTACH_DEVICE => {
            // libvirt's legacy call means "the running domain".
            let a: DomXml = dec(args)?;
            d.attach_device(&dom(&a.dom)?, &a.xml, 1).await?;
            void()
        }
        p::DOMAIN_ATTACH_DEVICE_FLAGS => {
            let a: DomXmlFlags = dec(args)?;
            d.attach_device(&dom(&a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_DETACH_DEVICE => {
            let a: DomXml = dec(args)?;
            d.detach_device(&dom(&a.dom)?, &a.xml, 1).await?;
            void()
        }
        p::DOMAIN_DETACH_DEVICE_FLAGS => {
            let a: DomXmlFlags = dec(args)?;
            d.detach_device(&dom(&a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_DETACH_DEVICE_ALIAS => {
            let a: DomainDetachDeviceAliasArgs = dec(args)?;
            d.detach_alias(&dom(&a.dom)?, &a.alias, a.flags).await?;
            void()
        }
        p::DOMAIN_UPDATE_DEVICE_FLAGS => {
            let a: DomXmlFlags = dec(args)?;
            d.update_device(&dom(&a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_BLOCK_RESIZE => {
            let a: DomainBlockResizeArgs = dec(args)?;
            d.block_resize(&dom(&a.dom)?, &a.disk, a.size, a.flags)
                .await?;
            void()
        }
        p::DOMAIN_GET_BLOCK_INFO => {
            let a: DomainGetBlockInfoArgs = dec(args)?;
            let i = d.block_info(&dom(&a.dom)?, &a.path, a.flags).await?;
            ret(DomainGetBlockInfoRet {
                allocation: i.allocation,
                capacity: i.capacity,
                physical: i.physical,
            })
        }
        p::DOMAIN_BLOCK_STATS => {
            let a: DomainBlockStatsArgs = dec(args)?;
            let s = d.block_stats(&dom(&a.dom)?, &a.path).await?;
            ret(DomainBlockStatsRet {
                rd_req: s.rd_req,
                rd_bytes: s.rd_bytes,
                wr_req: s.wr_req,
                wr_bytes: s.wr_bytes,
                // libvirt's QEMU driver has no error count either.
                errs: -1,
            })
        }
        p::DOMAIN_BLOCK_STATS_FLAGS => {
            let a: DomainBlockStatsFlagsArgs = dec(args)?;
            // VIR_TYPED_PARAM_STRING_OKAY is the only flag.
            VirError::check_flags(a.flags, 4, "virDomainBlockStatsFlags")?;
            if a.nparams < 0 {
                return Err(api_arg(
                    "nparams in virDomainBlockStatsFlags must be greater than or equal to 0",
                ));
            }
            let s = d.block_stats(&dom(&a.dom)?, &a.path).await?;
            // libvirt's QEMU driver's fields, in its order (no "errs").
            let all = [
                ("wr_bytes", s.wr_bytes),
                ("wr_operations", s.wr_req),
                ("rd_bytes", s.rd_bytes),
                ("rd_operations", s.rd_req),
                ("flush_operations", s.flush_req),
                ("wr_total_times", s.wr_total_ns),
                ("rd_total_times", s.rd_total_ns),
                ("flush_total_times", s.flush_total_ns),
            ];
            let n = all.len() as i32;
            let params = all
                .into_iter()
                .take(a.nparams as usize)
                .map(|(f, v)| TypedParam {
                    field: f.to_string(),
                    value: TypedValue::LLong(v),
                })
                .collect();
            ret(TypedParamsRet {
                params,
                nparams: if a.nparams == 0 { n } else { n.min(a.nparams) },
            })
        }
        p::DOMAIN_INTERFACE_STATS => {
            let a: DomainInterfaceStatsArgs = dec(args)?;
            let s = d.interface_stats(&dom(&a.dom)?, &a.device).await?;
            ret(DomainInterfaceStatsRet {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_errs: s.rx_errs,
                rx_drop: s.rx_drop,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_errs: s.tx_errs,
                tx_drop: s.tx_drop,
            })
        }
        // ---------------------------------------------------------------- secrets
        p::SECRET_DEFINE_XML => {
            let a: XmlFlags = dec(args)?;
            ret(secret_wire(&d.secrets.define(&a.xml, a.flags).await?))
        }
        p::SECRET_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            ret(secret_wire(
                &d.secrets.lookup_uuid(&Uuid::from_bytes(a.uuid))?,
            ))
        }
        p::SECRET_LOOKUP_BY_USAGE => {
            let a: SecretLookupByUsageArgs = dec(args)?;
            ret(secret_wire(
                &d.secrets.lookup_usage(a.usage_type, &a.usage_id)?,
            ))
        }
        p::SECRET_GET_XML_DESC => {
            let a: SecretFlags = dec(args)?;
            ret(Str {
                s: d.secrets
                    .xml_desc(&Uuid::from_bytes(a.secret.uuid), a.flags)?,
            })
        }
        p::SECRET_SET_VALUE => {
            let a: SecretSetValueArgs = dec(args)?;
            d.secrets
                .set_value(&Uuid::from_bytes(a.secret.uuid), a.value.0, a.flags)
                .await?;
            void()
        }
        p::SECRET_GET_VALUE => {
            let a: SecretFlags = dec(args)?;
            let v = d
                .secrets
                .get_value(&Uuid::from_bytes(a.secret.uuid), a.flags)?;
            ret(SecretGetValueRet {
                value: Opaque(v.expose().to_vec()),
            })
        }
        p::SECRET_UNDEFINE => {
            let a: SecretArg = dec(args)?;
            d.secrets.undefine(&Uuid::from_bytes(a.secret.uuid)).await?;
            void()
        }
        p::CONNECT_NUM_OF_SECRETS => ret(Int {
            v: d.secrets.count() as i32,
        }),
        p::CONNECT_LIST_SECRETS => {
            let a: Int = dec(args)?;
            if a.v < 0 {
                return Err(api_arg(
                    "maxuuids in virConnectListSecrets must be greater than or equal to 0",
                ));
            }
            let names = d
                .secrets
                .list_all(0)?
                .into_iter()
                .take(a.v as usize)
                .map(|s| s.uuid.hyphenated().to_string())
                .collect();
            ret(ListNamesRet { names })
        }
        p::CONNECT_LIST_ALL_SECRETS => {
            let a: ListAllSecretsArgs = dec(args)?;
            let all = d.secrets.list_all(a.flags)?;
            let n = all.len() as u32;
            let secrets = if a.need_results != 0 {
                all.iter().map(secret_wire).collect()
            } else {
                Vec::new()
            };
            ret(ListAllSecretsRet { secrets, ret: n })
        }
        p::DOMAIN_GET_SECURITY_LABEL => {
            let a: Dom = dec(args)?;
            dom(&a.dom)?;
            ret(DomainGetSecurityLabelRet {
                label: CharArray(String::new()),
                enforcing: 0,
            })
        }
        p::DOMAIN_GET_METADATA => {
            let a: DomainGetMetadataArgs = dec(args)?;
            VirError::check_flags(a.flags, 3, "virDomainGetMetadata")?;
            let o = dom(&a.dom)?;
            let def = d.def_for(&o, a.flags)?.tree()?;
            let v = match (a.type_, a.uri) {
                (0 | 1, Some(_)) => {
                    return Err(api_arg("uri in virDomainGetMetadata must be NULL"))
                }
                (0, None) => def.description(),
                (1, None) => def.title(),
                (2, Some(uri)) => def.metadata_element(&uri),
                (2, None) => return Err(api_arg("uri in virDomainGetMetadata must not be NULL")),
                (t, _) => {
                    return Err(VirError::new(
                        code::INVALID_ARG,
                        from::DOMAIN,
                        format!("invalid argument: unknown metadata type '{t}'"),
                    ))
                }
            };
            text(v.ok_or_else(VirError::no_metadata)?)
        }
        p::DOMAIN_SET_METADATA => {
            let a: DomainSetMetadataArgs = dec(args)?;
            let o = dom(&a.dom)?;
            d.set_metadata(
                &o,
                a.type_,
                a.metadata.as_deref(),
                a.key.as_deref(),
                a.uri.as_deref(),
                a.flags,
            )
            .await?;
            void()
        }
        _ => Err(VirError::rpc(&format!("unknown procedure: {proc_}"))),
    }
}
