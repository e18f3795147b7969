//! Networks, storage pools, node devices, host interfaces and network filters: what a
//! libvirt host has besides domains, as metalvirt has it (`host/inventory.rs`). Lists and
//! lookups answer; what would create or change such an object answers `VIR_ERR_NO_SUPPORT`
//! saying why.

use super::*;
use crate::error::Missing;
use crate::host::inventory::{self as inv, HostDevice, HostNetwork};

/// libvirt's list maxima (`REMOTE_*_LIST_MAX`).
const LIST_MAX: usize = 16384;
const NODE_DEVICE_LIST_MAX: usize = 65536;

fn net_wire(n: &HostNetwork) -> Network {
    Network {
        name: n.name.clone(),
        uuid: *n.uuid.as_bytes(),
    }
}

/// The network a call names (by uuid, as libvirt's drivers look it up).
fn net(c: &Client, w: &Network) -> VirResult<HostNetwork> {
    inv::network_by_uuid(&c.driver, &Uuid::from_bytes(w.uuid))
}

/// A name list for the legacy `virConnectList*` calls: at most `max` (negative is refused
/// as libvirt's remote driver does).
fn names(all: Vec<String>, max: i32, limit: usize) -> VirResult<Vec<u8>> {
    if max < 0 || max as usize > limit {
        return Err(VirError::rpc(&format!(
            "maxnames > REMOTE_*_LIST_MAX ({max} > {limit})"
        )));
    }
    ret(ListNamesRet {
        names: all.into_iter().take(max as usize).collect(),
    })
}

fn count(n: usize) -> VirResult<Vec<u8>> {
    ret(Int { v: n as i32 })
}

/// `virConnectListAll*` of a kind metalvirt has none of.
fn none_listed<T: Default + crate::protocol::xdr::Xdr>(
    args: &[u8],
    api: &str,
    allowed: u32,
) -> VirResult<Vec<u8>> {
    let a: ListAllArgs = dec(args)?;
    VirError::check_flags(a.flags, allowed, api)?;
    ret(T::default())
}

fn check_limit(n: usize, limit: usize, what: &str) -> VirResult<()> {
    if n > limit {
        return Err(VirError::rpc(&format!(
            "too many {what} '{n}' for limit '{limit}'"
        )));
    }
    Ok(())
}

fn dev_wire(d: &HostDevice) -> NodeDevice {
    NodeDevice { name: d.name() }
}

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- networks
        p::CONNECT_NUM_OF_NETWORKS => count(inv::networks(d, 0).len()),
        p::CONNECT_LIST_NETWORKS => {
            let a: Int = dec(args)?;
            let all = inv::networks(d, 0).into_iter().map(|n| n.name).collect();
            names(all, a.v, LIST_MAX)
        }
        p::CONNECT_NUM_OF_DEFINED_NETWORKS => count(0),
        p::CONNECT_LIST_DEFINED_NETWORKS => {
            let a: Int = dec(args)?;
            names(Vec::new(), a.v, LIST_MAX)
        }
        p::CONNECT_LIST_ALL_NETWORKS => {
            let a: ListAllArgs = dec(args)?;
            VirError::check_flags(
                a.flags,
                inv::NETWORK_LIST_FLAGS,
                "virConnectListAllNetworks",
            )?;
            let list = inv::networks(d, a.flags);
            check_limit(list.len(), LIST_MAX, "networks")?;
            let n = list.len() as u32;
            let nets = if a.need_results != 0 {
                list.iter().map(net_wire).collect()
            } else {
                Vec::new()
            };
            ret(ListAllNetworksRet { nets, ret: n })
        }
        p::NETWORK_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            ret(NetArg {
                net: net_wire(&inv::network(d, &a.s)?),
            })
        }
        p::NETWORK_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            ret(NetArg {
                net: net_wire(&inv::network_by_uuid(d, &Uuid::from_bytes(a.uuid))?),
            })
        }
        p::NETWORK_GET_XML_DESC => {
            let a: NetFlags = dec(args)?;
            // VIR_NETWORK_XML_INACTIVE: the same (nothing differs between the two).
            VirError::check_flags(a.flags, 1, "virNetworkGetXMLDesc")?;
            text(inv::network_xml(&net(c, &a.net)?))
        }
        p::NETWORK_GET_BRIDGE_NAME => {
            let a: NetArg = dec(args)?;
            text(net(c, &a.net)?.name)
        }
        // Always active, persistent and autostarted: the bridge is there whenever the
        // daemon serves.
        p::NETWORK_IS_ACTIVE | p::NETWORK_IS_PERSISTENT | p::NETWORK_GET_AUTOSTART => {
            let a: NetArg = dec(args)?;
            net(c, &a.net)?;
            ret(Int { v: 1 })
        }
        p::NETWORK_CREATE | p::NETWORK_DESTROY | p::NETWORK_UNDEFINE => {
            let a: NetArg = dec(args)?;
            net(c, &a.net)?;
            Err(no_support(proc_, inv::NETWORKS_READ_ONLY, from::NETWORK))
        }
        p::NETWORK_SET_AUTOSTART => {
            let a: NetSetAutostartArgs = dec(args)?;
            net(c, &a.net)?;
            Err(no_support(proc_, inv::NETWORKS_READ_ONLY, from::NETWORK))
        }
        p::NETWORK_CREATE_XML | p::NETWORK_DEFINE_XML => {
            let _: Str = dec(args)?;
            Err(no_support(proc_, inv::NETWORKS_READ_ONLY, from::NETWORK))
        }
        p::NETWORK_CREATE_XML_FLAGS | p::NETWORK_DEFINE_XML_FLAGS => {
            let _: XmlFlags = dec(args)?;
            Err(no_support(proc_, inv::NETWORKS_READ_ONLY, from::NETWORK))
        }

        // ---------------------------------------------------------------- storage
        p::CONNECT_NUM_OF_STORAGE_POOLS | p::CONNECT_NUM_OF_DEFINED_STORAGE_POOLS => count(0),
        p::CONNECT_LIST_STORAGE_POOLS | p::CONNECT_LIST_DEFINED_STORAGE_POOLS => {
            let a: Int = dec(args)?;
            names(Vec::new(), a.v, LIST_MAX)
        }
        p::CONNECT_LIST_ALL_STORAGE_POOLS => none_listed::<ListAllStoragePoolsRet>(
            args,
            "virConnectListAllStoragePools",
            (1 << 20) - 1,
        ),
        p::STORAGE_POOL_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::StoragePool,
                &format!("no storage pool with matching name '{}'", a.s),
            ))
        }
        p::STORAGE_POOL_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            Err(VirError::not_found(
                Missing::StoragePool,
                &format!(
                    "no storage pool with matching uuid '{}'",
                    Uuid::from_bytes(a.uuid)
                ),
            ))
        }
        p::STORAGE_POOL_LOOKUP_BY_VOLUME => {
            let a: VolArg = dec(args)?;
            Err(VirError::not_found(
                Missing::StorageVol,
                &format!("no storage vol with matching key {}", a.vol.key),
            ))
        }
        p::STORAGE_VOL_LOOKUP_BY_KEY => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::StorageVol,
                &format!("no storage vol with matching key {}", a.s),
            ))
        }
        p::STORAGE_VOL_LOOKUP_BY_PATH => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::StorageVol,
                &format!("no storage vol with matching path '{}'", a.s),
            ))
        }
        p::STORAGE_POOL_CREATE_XML | p::STORAGE_POOL_DEFINE_XML => {
            let _: XmlFlags = dec(args)?;
            Err(no_support(proc_, inv::NO_STORAGE, from::STORAGE))
        }

        // ---------------------------------------------------------------- node devices
        p::NODE_NUM_OF_DEVICES => {
            let a: NodeNumOfDevicesArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virNodeNumOfDevices")?;
            count(inv::devices_with_cap(d, a.cap.as_deref()).len())
        }
        p::NODE_LIST_DEVICES => {
            let a: NodeListDevicesArgs = dec(args)?;
            VirError::check_flags(a.flags, 0, "virNodeListDevices")?;
            let all = inv::devices_with_cap(d, a.cap.as_deref())
                .iter()
                .take(a.maxnames.max(0) as usize)
                .map(HostDevice::name)
                .collect();
            names(all, a.maxnames, NODE_DEVICE_LIST_MAX)
        }
        p::CONNECT_LIST_ALL_NODE_DEVICES => {
            let a: ListAllArgs = dec(args)?;
            let allowed = inv::devcap::ALL_CAPS | inv::devcap::ACTIVE | inv::devcap::INACTIVE;
            VirError::check_flags(a.flags, allowed, "virConnectListAllNodeDevices")?;
            let list = inv::devices(d, a.flags);
            check_limit(list.len(), NODE_DEVICE_LIST_MAX, "node devices")?;
            let n = list.len() as u32;
            let devices = if a.need_results != 0 {
                list.iter().map(dev_wire).collect()
            } else {
                Vec::new()
            };
            ret(ListAllNodeDevicesRet { devices, ret: n })
        }
        p::NODE_DEVICE_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            ret(NodeDeviceArg {
                dev: dev_wire(&inv::device(d, &a.s)?),
            })
        }
        p::NODE_DEVICE_GET_XML_DESC => {
            let a: NameFlags = dec(args)?;
            VirError::check_flags(a.flags, 0, "virNodeDeviceGetXMLDesc")?;
            text(inv::device_xml(d, &inv::device(d, &a.name)?))
        }
        p::NODE_DEVICE_GET_PARENT => {
            let a: Str = dec(args)?;
            ret(NodeDeviceGetParentRet {
                parent: inv::device(d, &a.s)?.parent().map(str::to_string),
            })
        }
        p::NODE_DEVICE_NUM_OF_CAPS => {
            let a: Str = dec(args)?;
            count(inv::device(d, &a.s)?.caps().len())
        }
        p::NODE_DEVICE_LIST_CAPS => {
            let a: NodeDeviceListCapsArgs = dec(args)?;
            let caps = inv::device(d, &a.name)?.caps();
            names(
                caps.iter().map(|s| s.to_string()).collect(),
                a.maxnames,
                NODE_DEVICE_LIST_MAX,
            )
        }
        p::NODE_DEVICE_CREATE_XML | p::NODE_DEVICE_DEFINE_XML => {
            let _: XmlFlags = dec(args)?;
            Err(no_support(proc_, inv::DEVICES_FIXED, from::NODEDEV))
        }

        // ---------------------------------------------------------------- host interfaces
        p::CONNECT_NUM_OF_INTERFACES | p::CONNECT_NUM_OF_DEFINED_INTERFACES => count(0),
        p::CONNECT_LIST_INTERFACES | p::CONNECT_LIST_DEFINED_INTERFACES => {
            let a: Int = dec(args)?;
            names(Vec::new(), a.v, LIST_MAX)
        }
        p::CONNECT_LIST_ALL_INTERFACES => {
            none_listed::<ListAllInterfacesRet>(args, "virConnectListAllInterfaces", 3)
        }
        p::INTERFACE_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::Interface,
                &format!("couldn't find interface named '{}'", a.s),
            ))
        }
        p::INTERFACE_LOOKUP_BY_MAC_STRING => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::Interface,
                &format!("couldn't find interface with MAC address '{}'", a.s),
            ))
        }
        p::INTERFACE_DEFINE_XML => {
            let _: XmlFlags = dec(args)?;
            Err(no_support(proc_, inv::NO_INTERFACES, from::INTERFACE))
        }

        // ---------------------------------------------------------------- network filters
        p::CONNECT_NUM_OF_NWFILTERS => count(0),
        p::CONNECT_LIST_NWFILTERS => {
            let a: Int = dec(args)?;
            names(Vec::new(), a.v, LIST_MAX)
        }
        p::CONNECT_LIST_ALL_NWFILTERS => {
            none_listed::<ListAllNwFiltersRet>(args, "virConnectListAllNWFilters", 0)
        }
        p::CONNECT_LIST_ALL_NWFILTER_BINDINGS => {
            none_listed::<ListAllNwFilterBindingsRet>(args, "virConnectListAllNWFilterBindings", 0)
        }
        p::NWFILTER_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::NwFilter,
                &format!("no nwfilter with matching name '{}'", a.s),
            ))
        }
        p::NWFILTER_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            Err(VirError::not_found(
                Missing::NwFilter,
                &format!(
                    "no nwfilter with matching uuid '{}'",
                    Uuid::from_bytes(a.uuid)
                ),
            ))
        }
        p::NWFILTER_BINDING_LOOKUP_BY_PORT_DEV => {
            let a: Str = dec(args)?;
            Err(VirError::not_found(
                Missing::NwFilterBinding,
                &format!("no nwfilter binding for port dev '{}'", a.s),
            ))
        }
        p::NWFILTER_DEFINE_XML => {
            let _: Str = dec(args)?;
            Err(no_support(proc_, inv::NO_NWFILTERS, from::NWFILTER))
        }
        p::NWFILTER_DEFINE_XML_FLAGS => {
            let _: XmlFlags = dec(args)?;
            Err(no_support(proc_, inv::NO_NWFILTERS, from::NWFILTER))
        }
        _ => Err(unhandled(proc_)),
    }
}

/// `VIR_ERR_NO_SUPPORT` naming the procedure's API.
fn no_support(proc_: i32, why: &str, domain: i32) -> VirError {
    let api = p::info(proc_).map_or("?", |i| i.api);
    VirError::no_support(api, why, domain)
}
