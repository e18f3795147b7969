//! Procedure dispatch: decode args, check access, call the driver, encode the result.
//! This is the only place driver results become wire structs.

use std::sync::Arc;

use uuid::Uuid;

use super::client::{Callback, Client};
use crate::driver::{DomRef, DomainObj};
use crate::error::{from, VirError, VirResult};
use crate::events;
use crate::host;
use crate::protocol::header::{HEADER_LEN, MESSAGE_MAX};
use crate::protocol::procs::{self as p, Access, Area};
use crate::protocol::types::*;
use crate::protocol::xdr::{from_bytes, to_bytes, CharArray, Opaque, Xdr, STRING_MAX};

mod callbacks;
mod connect;
mod devices;
mod domains;
mod inventory;
mod queries;
mod secrets;
mod streams;

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

/// The arguments of a call that comes in two forms, libvirt's first one without flags (`X`)
/// and its `X_FLAGS` successor: the old form means `old_flags`.
fn dom_flags(args: &[u8], has_flags: bool, old_flags: u32) -> VirResult<DomFlags> {
    if has_flags {
        return dec(args);
    }
    let a: Dom = dec(args)?;
    Ok(DomFlags {
        dom: a.dom,
        flags: old_flags,
    })
}

/// [`dom_flags`] for the device calls (a domain, device XML and flags).
fn dom_xml_flags(args: &[u8], has_flags: bool, old_flags: u32) -> VirResult<DomXmlFlags> {
    if has_flags {
        return dec(args);
    }
    let a: DomXml = dec(args)?;
    Ok(DomXmlFlags {
        dom: a.dom,
        xml: a.xml,
        flags: old_flags,
    })
}

/// Driver statistics and settings as typed parameters.
fn typed_params(params: Vec<(String, crate::driver::StatValue)>) -> Vec<TypedParam> {
    use crate::driver::StatValue as S;
    params
        .into_iter()
        .map(|(field, v)| TypedParam {
            field,
            value: match v {
                S::Int(n) => TypedValue::Int(n),
                S::UInt(n) => TypedValue::UInt(n),
                S::ULLong(n) => TypedValue::ULLong(n),
                S::Double(n) => TypedValue::Double(n),
                S::Str(s) => TypedValue::String(s),
            },
        })
        .collect()
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

/// The domain a call names (by uuid, its name for the error), as every domain handler
/// looks it up.
fn dom(c: &Client, w: &Domain) -> VirResult<Arc<DomainObj>> {
    c.driver.get(&Uuid::from_bytes(w.uuid), &w.name)
}

/// The answer for a procedure its area has no handler for (a table bug: the table test
/// walks every procedure to its area), the same as libvirtd's for an unknown procedure.
fn unhandled(proc_: i32) -> VirError {
    VirError::rpc(&format!("unknown procedure: {proc_}"))
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
/// `serial` is the call's: a call that opens a stream (a console) registers the stream
/// under it.
pub async fn call(c: &Arc<Client>, proc_: i32, serial: u32, args: &[u8]) -> VirResult<Vec<u8>> {
    let r = call_inner(c, proc_, serial, args).await;
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

async fn call_inner(c: &Arc<Client>, proc_: i32, serial: u32, args: &[u8]) -> VirResult<Vec<u8>> {
    let Some(info) = p::info(proc_) else {
        return Err(VirError::rpc(&format!("unknown procedure: {proc_}")));
    };
    let (opened, readonly) = c.with(|s| (s.opened, s.readonly));
    if !opened && !info.before_open {
        return Err(VirError::rpc_internal("hypervisor connection not open"));
    }
    if readonly && info.access == Access::Write {
        return Err(VirError::read_only(info.api));
    }
    if let Some(what) = p::impossible(proc_) {
        return Err(unsupported_op(what));
    }
    match info.area {
        Area::Host => connect::call(c, proc_, args).await,
        Area::Events => callbacks::call(c, proc_, args).await,
        Area::Domains => domains::call(c, proc_, args).await,
        Area::Queries => queries::call(c, proc_, args).await,
        Area::Devices => devices::call(c, proc_, args).await,
        Area::Secrets => secrets::call(c, proc_, args).await,
        Area::Inventory => inventory::call(c, proc_, args).await,
        Area::Streams => streams::call(c, proc_, serial, args).await,
        // Answered above from `impossible`; a table entry that claims this area without
        // being impossible is a bug the table test catches.
        Area::Unsupported => Err(unhandled(proc_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::driver::Driver;
    use crate::rpc::client::{Outbox, Peer};

    #[test]
    fn every_listed_procedure_has_its_handler() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            state_dir: dir.path().join("state"),
            config_dir: dir.path().join("etc"),
            socket_dir: dir.path().join("run"),
            ..Default::default()
        };
        cfg.sim.nodes = 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            crate::persist::ensure_dir(&cfg.state_dir, 0o700).unwrap();
            let nodes = crate::backend::inventory::build(&cfg).unwrap();
            let driver = Driver::open(cfg, nodes).await.unwrap();
            let (out, _rx) = Outbox::new(1 << 20);
            let c = Arc::new(Client::new(
                1,
                false,
                Peer::default(),
                Arc::new(out),
                driver,
            ));
            c.with(|s| s.opened = true);
            let unknown = |n: i32| format!("unknown procedure: {n}");
            for &n in p::ALL {
                let info = p::info(n).unwrap();
                assert_eq!(
                    info.area == Area::Unsupported,
                    p::impossible(n).is_some(),
                    "{} ({n}): area {:?} and impossible() disagree",
                    info.api,
                    info.area
                );
                if n == p::CONNECT_OPEN || n == p::CONNECT_CLOSE {
                    continue;
                }
                // Empty arguments: every handler answers (mostly "Unable to decode"), none
                // falls through to "unknown procedure".
                let r = call_inner(&c, n, 1, &[]).await;
                if let Err(e) = r {
                    assert_ne!(
                        e.message,
                        unknown(n),
                        "{} ({n}) is listed in area {:?} but has no handler there",
                        info.api,
                        info.area
                    );
                }
            }
        });
    }
}
