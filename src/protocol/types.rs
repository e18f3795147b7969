//! Argument, return and message structs of the REMOTE program, written by hand from the wire
//! facts (field order is the wire order). Names follow libvirt's `remote_*_args` / `*_ret`.

use super::xdr::{CharArray, FixedChars, Opaque};
use crate::xdr_struct;

/// `remote_uuid`.
pub type RawUuid = [u8; 16];

xdr_struct! {
    /// `remote_nonnull_domain`. `id` is -1 for inactive domains.
    pub struct Domain { pub name: String, pub uuid: RawUuid, pub id: i32 }
}

xdr_struct! {
    /// `remote_nonnull_network`.
    pub struct Network { pub name: String, pub uuid: RawUuid }
}

xdr_struct! {
    /// `remote_error`: the payload of every failed reply.
    pub struct RemoteError {
        pub code: i32,
        pub domain: i32,
        pub message: Option<String>,
        pub level: i32,
        pub dom: Option<Domain>,
        pub str1: Option<String>,
        pub str2: Option<String>,
        pub str3: Option<String>,
        pub int1: i32,
        pub int2: i32,
        pub net: Option<Network>,
    }
}

impl From<&crate::error::VirError> for RemoteError {
    fn from(e: &crate::error::VirError) -> Self {
        RemoteError {
            code: e.code,
            domain: e.domain,
            message: Some(e.message.clone()),
            level: crate::error::LEVEL_ERROR,
            int1: -1,
            ..Default::default()
        }
    }
}

// ---- generic shapes shared by many procedures ----

xdr_struct! { /// A single string (`remote_nonnull_string`) argument or result.
pub struct Str { pub s: String } }
xdr_struct! { /// A single int result.
pub struct Int { pub v: i32 } }
xdr_struct! { /// A single unsigned hyper result.
pub struct U64 { pub v: u64 } }
xdr_struct! { /// Flags only.
pub struct Flags { pub flags: u32 } }
xdr_struct! { /// A domain only.
pub struct Dom { pub dom: Domain } }
xdr_struct! { /// A domain and flags.
pub struct DomFlags { pub dom: Domain, pub flags: u32 } }
xdr_struct! { /// XML and flags (`create_xml`, `define_xml_flags`).
pub struct XmlFlags { pub xml: String, pub flags: u32 } }

// ---- connection ----

xdr_struct! { pub struct ConnectOpenArgs { pub name: Option<String>, pub flags: u32 } }
xdr_struct! { pub struct AuthListRet { pub types: Vec<i32> } }
xdr_struct! { pub struct GetMaxVcpusArgs { pub type_: Option<String> } }

xdr_struct! {
    /// `remote_node_get_info_ret`: `model` is `char[32]`, 128 bytes on the wire.
    pub struct NodeGetInfoRet {
        pub model: FixedChars<32>,
        pub memory: u64,
        pub cpus: i32,
        pub mhz: i32,
        pub nodes: i32,
        pub sockets: i32,
        pub cores: i32,
        pub threads: i32,
    }
}

xdr_struct! { pub struct NodeGetCpuMapArgs { pub need_map: i32, pub need_online: i32, pub flags: u32 } }
xdr_struct! { pub struct NodeGetCpuMapRet { pub cpumap: Opaque, pub online: u32, pub ret: i32 } }
xdr_struct! { pub struct NodeGetCpuStatsArgs { pub cpu_num: i32, pub nparams: i32, pub flags: u32 } }
xdr_struct! { pub struct NodeCpuStat { pub field: String, pub value: u64 } }
xdr_struct! { pub struct NodeGetCpuStatsRet { pub params: Vec<NodeCpuStat>, pub nparams: i32 } }
xdr_struct! { pub struct NodeGetCellsFreeMemoryArgs { pub start_cell: i32, pub maxcells: i32 } }
xdr_struct! { pub struct NodeGetCellsFreeMemoryRet { pub cells: Vec<u64> } }
xdr_struct! { pub struct NodeGetSecurityModelRet { pub model: CharArray, pub doi: CharArray } }
xdr_struct! {
    pub struct GetDomainCapsArgs {
        pub emulatorbin: Option<String>,
        pub arch: Option<String>,
        pub machine: Option<String>,
        pub virttype: Option<String>,
        pub flags: u32,
    }
}

// ---- domain lookup and lists ----

xdr_struct! { pub struct LookupByUuidArgs { pub uuid: RawUuid } }
xdr_struct! { pub struct ListAllDomainsArgs { pub need_results: i32, pub flags: u32 } }
xdr_struct! { pub struct ListAllDomainsRet { pub domains: Vec<Domain>, pub ret: u32 } }
xdr_struct! { pub struct ListIdsRet { pub ids: Vec<i32> } }
xdr_struct! { pub struct ListNamesRet { pub names: Vec<String> } }

// ---- domain queries ----

xdr_struct! {
    /// `remote_domain_get_info_ret`: `state` (u_char) and `nrVirtCpu` (u_short) take 4 bytes.
    pub struct DomainGetInfoRet {
        pub state: u32,
        pub max_mem: u64,
        pub memory: u64,
        pub nr_virt_cpu: u32,
        pub cpu_time: u64,
    }
}
xdr_struct! { pub struct DomainGetStateRet { pub state: i32, pub reason: i32 } }
xdr_struct! { pub struct DomainSetAutostartArgs { pub dom: Domain, pub autostart: i32 } }
xdr_struct! { pub struct DomainGetVcpusArgs { pub dom: Domain, pub maxinfo: i32, pub maplen: i32 } }
xdr_struct! { pub struct VcpuInfo { pub number: u32, pub state: i32, pub cpu_time: u64, pub cpu: i32 } }
xdr_struct! { pub struct DomainGetVcpusRet { pub info: Vec<VcpuInfo>, pub cpumaps: Opaque } }
xdr_struct! {
    pub struct DomainSetMetadataArgs {
        pub dom: Domain,
        pub type_: i32,
        pub metadata: Option<String>,
        pub key: Option<String>,
        pub uri: Option<String>,
        pub flags: u32,
    }
}
xdr_struct! { pub struct DomainGetMetadataArgs { pub dom: Domain, pub type_: i32, pub uri: Option<String>, pub flags: u32 } }
xdr_struct! {
    pub struct DomainGetJobInfoRet {
        pub type_: i32,
        pub time_elapsed: u64,
        pub time_remaining: u64,
        pub data_total: u64,
        pub data_processed: u64,
        pub data_remaining: u64,
        pub mem_total: u64,
        pub mem_processed: u64,
        pub mem_remaining: u64,
        pub file_total: u64,
        pub file_processed: u64,
        pub file_remaining: u64,
    }
}
xdr_struct! { pub struct DomainGetJobStatsRet { pub type_: i32, pub params: Vec<TypedParam> } }
xdr_struct! { pub struct DomainGetMessagesRet { pub msgs: Vec<String> } }
xdr_struct! { pub struct DomainMemoryStatsArgs { pub dom: Domain, pub max_stats: u32, pub flags: u32 } }
xdr_struct! { pub struct DomainSaveArgs { pub dom: Domain, pub to: String } }
xdr_struct! { pub struct DomainSaveFlagsArgs { pub dom: Domain, pub to: String, pub dxml: Option<String>, pub flags: u32 } }
xdr_struct! { pub struct DomainSnapshotCreateXmlArgs { pub dom: Domain, pub xml: String, pub flags: u32 } }
xdr_struct! { pub struct DomainGetSecurityLabelRet { pub label: CharArray, pub enforcing: i32 } }

/// `remote_typed_param`: a name and a discriminated value.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedParam {
    /// Parameter name.
    pub field: String,
    /// Value.
    pub value: TypedValue,
}

/// The value union of a typed parameter (`VIR_TYPED_PARAM_*`).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TypedValue {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

impl super::xdr::Xdr for TypedParam {
    fn encode(&self, w: &mut Vec<u8>) {
        self.field.encode(w);
        match &self.value {
            TypedValue::Int(v) => {
                1i32.encode(w);
                v.encode(w)
            }
            TypedValue::UInt(v) => {
                2i32.encode(w);
                v.encode(w)
            }
            TypedValue::LLong(v) => {
                3i32.encode(w);
                v.encode(w)
            }
            TypedValue::ULLong(v) => {
                4i32.encode(w);
                v.encode(w)
            }
            TypedValue::Double(v) => {
                5i32.encode(w);
                v.encode(w)
            }
            TypedValue::Boolean(v) => {
                6i32.encode(w);
                i32::from(*v).encode(w)
            }
            TypedValue::String(v) => {
                7i32.encode(w);
                v.encode(w)
            }
        }
    }
    fn decode(r: &mut super::xdr::Reader<'_>) -> super::xdr::XdrResult<Self> {
        use super::xdr::XdrError;
        let field = String::decode(r)?;
        let value = match i32::decode(r)? {
            1 => TypedValue::Int(i32::decode(r)?),
            2 => TypedValue::UInt(u32::decode(r)?),
            3 => TypedValue::LLong(i64::decode(r)?),
            4 => TypedValue::ULLong(u64::decode(r)?),
            5 => TypedValue::Double(f64::decode(r)?),
            6 => TypedValue::Boolean(i32::decode(r)? != 0),
            7 => TypedValue::String(String::decode(r)?),
            t => return Err(XdrError(format!("unknown typed parameter type {t}"))),
        };
        Ok(TypedParam { field, value })
    }
}

// ---- devices, blocks, interfaces ----

xdr_struct! { /// `attach_device` / `detach_device`.
pub struct DomXml { pub dom: Domain, pub xml: String } }
xdr_struct! { /// `*_device_flags`.
pub struct DomXmlFlags { pub dom: Domain, pub xml: String, pub flags: u32 } }
xdr_struct! { pub struct DomainDetachDeviceAliasArgs { pub dom: Domain, pub alias: String, pub flags: u32 } }
xdr_struct! { pub struct DomainBlockResizeArgs { pub dom: Domain, pub disk: String, pub size: u64, pub flags: u32 } }
xdr_struct! { pub struct DomainGetBlockInfoArgs { pub dom: Domain, pub path: String, pub flags: u32 } }
xdr_struct! { pub struct DomainGetBlockInfoRet { pub allocation: u64, pub capacity: u64, pub physical: u64 } }
xdr_struct! { pub struct DomainBlockStatsArgs { pub dom: Domain, pub path: String } }
xdr_struct! {
    pub struct DomainBlockStatsRet {
        pub rd_req: i64, pub rd_bytes: i64, pub wr_req: i64, pub wr_bytes: i64, pub errs: i64,
    }
}
xdr_struct! { pub struct DomainBlockStatsFlagsArgs { pub dom: Domain, pub path: String, pub nparams: i32, pub flags: u32 } }
xdr_struct! { /// Two-phase typed-parameter results.
pub struct TypedParamsRet { pub params: Vec<TypedParam>, pub nparams: i32 } }
xdr_struct! { pub struct DomainInterfaceStatsArgs { pub dom: Domain, pub device: String } }
xdr_struct! {
    pub struct DomainInterfaceStatsRet {
        pub rx_bytes: i64, pub rx_packets: i64, pub rx_errs: i64, pub rx_drop: i64,
        pub tx_bytes: i64, pub tx_packets: i64, pub tx_errs: i64, pub tx_drop: i64,
    }
}

// ---- secrets ----

xdr_struct! {
    /// `remote_nonnull_secret`.
    pub struct Secret { pub uuid: RawUuid, pub usage_type: i32, pub usage_id: String }
}
xdr_struct! { pub struct SecretArg { pub secret: Secret } }
xdr_struct! { pub struct SecretFlags { pub secret: Secret, pub flags: u32 } }
xdr_struct! { pub struct SecretSetValueArgs { pub secret: Secret, pub value: Opaque, pub flags: u32 } }
xdr_struct! { pub struct SecretGetValueRet { pub value: Opaque } }
xdr_struct! { pub struct SecretLookupByUsageArgs { pub usage_type: i32, pub usage_id: String } }
xdr_struct! { pub struct ListAllSecretsArgs { pub need_results: i32, pub flags: u32 } }
xdr_struct! { pub struct ListAllSecretsRet { pub secrets: Vec<Secret>, pub ret: u32 } }

// ---- events ----

xdr_struct! { pub struct EventCallbackRegisterAnyArgs { pub event_id: i32, pub dom: Option<Domain> } }
xdr_struct! { pub struct EventCallbackRegisterAnyRet { pub callback_id: i32 } }
xdr_struct! { pub struct EventCallbackDeregisterAnyArgs { pub callback_id: i32 } }
xdr_struct! { pub struct EventRegisterAnyArgs { pub event_id: i32 } }
xdr_struct! { pub struct LifecycleMsg { pub dom: Domain, pub event: i32, pub detail: i32 } }
xdr_struct! { pub struct CallbackLifecycleMsg { pub callback_id: i32, pub msg: LifecycleMsg } }
xdr_struct! { pub struct CallbackDomMsg { pub callback_id: i32, pub dom: Domain } }
xdr_struct! { pub struct DeviceAliasMsg { pub dom: Domain, pub dev_alias: String } }
xdr_struct! { pub struct CallbackDeviceAliasMsg { pub callback_id: i32, pub msg: DeviceAliasMsg } }

// ---- host objects: networks, storage, node devices, host interfaces, network filters ----

xdr_struct! { /// `remote_nonnull_storage_pool`.
pub struct StoragePool { pub name: String, pub uuid: RawUuid } }
xdr_struct! { /// `remote_nonnull_storage_vol`.
pub struct StorageVol { pub pool: String, pub name: String, pub key: String } }
xdr_struct! { /// `remote_nonnull_node_device`.
pub struct NodeDevice { pub name: String } }
xdr_struct! { /// `remote_nonnull_interface`.
pub struct Interface { pub name: String, pub mac: String } }
xdr_struct! { /// `remote_nonnull_nwfilter`.
pub struct NwFilter { pub name: String, pub uuid: RawUuid } }
xdr_struct! { /// `remote_nonnull_nwfilter_binding`.
pub struct NwFilterBinding { pub portdev: String, pub filtername: String } }

xdr_struct! { /// The `virConnectListAll*` arguments (every object kind).
pub struct ListAllArgs { pub need_results: i32, pub flags: u32 } }
xdr_struct! { pub struct ListAllNetworksRet { pub nets: Vec<Network>, pub ret: u32 } }
xdr_struct! { pub struct ListAllStoragePoolsRet { pub pools: Vec<StoragePool>, pub ret: u32 } }
xdr_struct! { pub struct ListAllNodeDevicesRet { pub devices: Vec<NodeDevice>, pub ret: u32 } }
xdr_struct! { pub struct ListAllInterfacesRet { pub ifaces: Vec<Interface>, pub ret: u32 } }
xdr_struct! { pub struct ListAllNwFiltersRet { pub filters: Vec<NwFilter>, pub ret: u32 } }
xdr_struct! { pub struct ListAllNwFilterBindingsRet { pub bindings: Vec<NwFilterBinding>, pub ret: u32 } }

xdr_struct! { /// One network (argument or result).
pub struct NetArg { pub net: Network } }
xdr_struct! { pub struct NetFlags { pub net: Network, pub flags: u32 } }
xdr_struct! { pub struct NetSetAutostartArgs { pub net: Network, pub autostart: i32 } }
xdr_struct! { /// One storage pool (argument or result).
pub struct PoolArg { pub pool: StoragePool } }
xdr_struct! { pub struct PoolFlags { pub pool: StoragePool, pub flags: u32 } }
xdr_struct! { /// One storage volume (result).
pub struct VolArg { pub vol: StorageVol } }
xdr_struct! { /// One node device (result).
pub struct NodeDeviceArg { pub dev: NodeDevice } }
xdr_struct! { /// One host interface (argument or result).
pub struct IfaceArg { pub iface: Interface } }
xdr_struct! { pub struct IfaceFlags { pub iface: Interface, pub flags: u32 } }
xdr_struct! { /// One network filter (argument or result).
pub struct NwFilterArg { pub nwfilter: NwFilter } }
xdr_struct! { pub struct NwFilterFlags { pub nwfilter: NwFilter, pub flags: u32 } }

xdr_struct! { pub struct NodeNumOfDevicesArgs { pub cap: Option<String>, pub flags: u32 } }
xdr_struct! { pub struct NodeListDevicesArgs { pub cap: Option<String>, pub maxnames: i32, pub flags: u32 } }
xdr_struct! { /// A node device by name, and flags (`NODE_DEVICE_GET_XML_DESC`).
pub struct NameFlags { pub name: String, pub flags: u32 } }
xdr_struct! { pub struct NodeDeviceGetParentRet { pub parent: Option<String> } }
xdr_struct! { pub struct NodeDeviceListCapsArgs { pub name: String, pub maxnames: i32 } }

// ---- CPU models, guest time ----

xdr_struct! { pub struct CpuModelNamesArgs { pub arch: String, pub need_results: i32, pub flags: u32 } }
xdr_struct! { pub struct CpuModelNamesRet { pub models: Vec<String>, pub ret: i32 } }
xdr_struct! { pub struct BaselineCpuArgs { pub xml_cpus: Vec<String>, pub flags: u32 } }
xdr_struct! {
    pub struct BaselineHypervisorCpuArgs {
        pub emulator: Option<String>,
        pub arch: Option<String>,
        pub machine: Option<String>,
        pub virttype: Option<String>,
        pub xml_cpus: Vec<String>,
        pub flags: u32,
    }
}
xdr_struct! {
    pub struct CompareHypervisorCpuArgs {
        pub emulator: Option<String>,
        pub arch: Option<String>,
        pub machine: Option<String>,
        pub virttype: Option<String>,
        pub xml_cpu: String,
        pub flags: u32,
    }
}
xdr_struct! { pub struct DomainGetTimeRet { pub seconds: i64, pub nseconds: u32 } }
xdr_struct! { pub struct DomainSetTimeArgs { pub dom: Domain, pub seconds: i64, pub nseconds: u32, pub flags: u32 } }

// ---- domain statistics ----

xdr_struct! { pub struct GetAllDomainStatsArgs { pub doms: Vec<Domain>, pub stats: u32, pub flags: u32 } }
xdr_struct! { /// `remote_domain_stats_record`.
pub struct DomainStatsRecord { pub dom: Domain, pub params: Vec<TypedParam> } }
xdr_struct! { pub struct GetAllDomainStatsRet { pub ret_stats: Vec<DomainStatsRecord> } }

// ---- block I/O limits ----

xdr_struct! { pub struct DomainSetBlockIoTuneArgs { pub dom: Domain, pub disk: String, pub params: Vec<TypedParam>, pub flags: u32 } }
xdr_struct! { pub struct DomainGetBlockIoTuneArgs { pub dom: Domain, pub disk: Option<String>, pub nparams: i32, pub flags: u32 } }

// ---- streams ----

xdr_struct! { pub struct DomainOpenConsoleArgs { pub dom: Domain, pub dev_name: Option<String>, pub flags: u32 } }
