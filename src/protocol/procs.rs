//! The one table of REMOTE procedures metalvirt knows: number, the public libvirt API it
//! serves (named in read-only refusals and flag errors) and its access class.
//!
//! A procedure absent from this table is answered like libvirtd answers an unknown one
//! (`VIR_ERR_RPC`, "unknown procedure: N"), which clients map to `VIR_ERR_NO_SUPPORT`.

/// Whether a read-only connection may call a procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed on read-only connections.
    Read,
    /// Refused on read-only connections with `VIR_ERR_OPERATION_DENIED`.
    Write,
}

/// Which group of handlers serves a procedure (`rpc/dispatch/<area>.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Connection and host: open, close, versions, capabilities, node info, features.
    Host,
    /// Event registration.
    Events,
    /// Domain lookups, lists, define, start, stop and the lifecycle.
    Domains,
    /// Domain queries and settings: info, XML, autostart, metadata, stats.
    Queries,
    /// Devices: attach, detach, update, block and interface calls.
    Devices,
    /// Secrets.
    Secrets,
    /// Networks, storage pools, node devices, host interfaces, network filters.
    Inventory,
    /// Calls that open a stream (consoles).
    Streams,
    /// Impossible on bare metal: answered from [`impossible`], no handler.
    Unsupported,
}

/// Static facts about one procedure.
#[derive(Debug, Clone, Copy)]
pub struct ProcInfo {
    /// Procedure number.
    pub num: i32,
    /// The public API, e.g. `virDomainCreate`.
    pub api: &'static str,
    /// Access class.
    pub access: Access,
    /// Allowed before CONNECT_OPEN.
    pub before_open: bool,
    /// Its handlers.
    pub area: Area,
}

macro_rules! procs {
    ($($name:ident = $num:literal, $api:literal, $acc:ident, $area:ident $(, $pre:ident)?;)*) => {
        $(
            #[allow(missing_docs)]
            pub const $name: i32 = $num;
        )*
        /// Looks a procedure up.
        pub fn info(num: i32) -> Option<ProcInfo> {
            match num {
                $($num => Some(ProcInfo {
                    num: $num,
                    api: $api,
                    access: Access::$acc,
                    before_open: procs!(@pre $($pre)?),
                    area: Area::$area,
                }),)*
                _ => None,
            }
        }
        /// Every known procedure.
        pub const ALL: &[i32] = &[$($num),*];
    };
    (@pre pre) => { true };
    (@pre) => { false };
}

procs! {
    // Networks: the nodes' bridges, read-only.
    CONNECT_LIST_DEFINED_NETWORKS = 36, "virConnectListDefinedNetworks", Read, Inventory;
    CONNECT_LIST_NETWORKS = 38, "virConnectListNetworks", Read, Inventory;
    NETWORK_CREATE = 39, "virNetworkCreate", Write, Inventory;
    NETWORK_CREATE_XML = 40, "virNetworkCreateXML", Write, Inventory;
    NETWORK_DEFINE_XML = 41, "virNetworkDefineXML", Write, Inventory;
    NETWORK_DESTROY = 42, "virNetworkDestroy", Write, Inventory;
    NETWORK_GET_XML_DESC = 43, "virNetworkGetXMLDesc", Read, Inventory;
    NETWORK_GET_AUTOSTART = 44, "virNetworkGetAutostart", Read, Inventory;
    NETWORK_GET_BRIDGE_NAME = 45, "virNetworkGetBridgeName", Read, Inventory;
    NETWORK_LOOKUP_BY_NAME = 46, "virNetworkLookupByName", Read, Inventory;
    NETWORK_LOOKUP_BY_UUID = 47, "virNetworkLookupByUUID", Read, Inventory;
    NETWORK_SET_AUTOSTART = 48, "virNetworkSetAutostart", Write, Inventory;
    NETWORK_UNDEFINE = 49, "virNetworkUndefine", Write, Inventory;
    CONNECT_NUM_OF_DEFINED_NETWORKS = 50, "virConnectNumOfDefinedNetworks", Read, Inventory;
    CONNECT_NUM_OF_NETWORKS = 52, "virConnectNumOfNetworks", Read, Inventory;
    NETWORK_IS_ACTIVE = 152, "virNetworkIsActive", Read, Inventory;
    NETWORK_IS_PERSISTENT = 153, "virNetworkIsPersistent", Read, Inventory;
    CONNECT_LIST_ALL_NETWORKS = 283, "virConnectListAllNetworks", Read, Inventory;
    NETWORK_DEFINE_XML_FLAGS = 432, "virNetworkDefineXMLFlags", Write, Inventory;
    NETWORK_CREATE_XML_FLAGS = 437, "virNetworkCreateXMLFlags", Write, Inventory;
    // Storage: none.
    CONNECT_NUM_OF_STORAGE_POOLS = 71, "virConnectNumOfStoragePools", Read, Inventory;
    CONNECT_LIST_STORAGE_POOLS = 72, "virConnectListStoragePools", Read, Inventory;
    CONNECT_NUM_OF_DEFINED_STORAGE_POOLS = 73, "virConnectNumOfDefinedStoragePools", Read, Inventory;
    CONNECT_LIST_DEFINED_STORAGE_POOLS = 74, "virConnectListDefinedStoragePools", Read, Inventory;
    STORAGE_POOL_CREATE_XML = 76, "virStoragePoolCreateXML", Write, Inventory;
    STORAGE_POOL_DEFINE_XML = 77, "virStoragePoolDefineXML", Write, Inventory;
    STORAGE_POOL_LOOKUP_BY_NAME = 84, "virStoragePoolLookupByName", Read, Inventory;
    STORAGE_POOL_LOOKUP_BY_UUID = 85, "virStoragePoolLookupByUUID", Read, Inventory;
    STORAGE_POOL_LOOKUP_BY_VOLUME = 86, "virStoragePoolLookupByVolume", Read, Inventory;
    STORAGE_VOL_LOOKUP_BY_KEY = 96, "virStorageVolLookupByKey", Read, Inventory;
    STORAGE_VOL_LOOKUP_BY_PATH = 97, "virStorageVolLookupByPath", Read, Inventory;
    CONNECT_LIST_ALL_STORAGE_POOLS = 281, "virConnectListAllStoragePools", Read, Inventory;
    // Node devices: the computer and the nodes' NIC functions.
    NODE_NUM_OF_DEVICES = 111, "virNodeNumOfDevices", Read, Inventory;
    NODE_LIST_DEVICES = 112, "virNodeListDevices", Read, Inventory;
    NODE_DEVICE_LOOKUP_BY_NAME = 113, "virNodeDeviceLookupByName", Read, Inventory;
    NODE_DEVICE_GET_XML_DESC = 114, "virNodeDeviceGetXMLDesc", Read, Inventory;
    NODE_DEVICE_GET_PARENT = 115, "virNodeDeviceGetParent", Read, Inventory;
    NODE_DEVICE_NUM_OF_CAPS = 116, "virNodeDeviceNumOfCaps", Read, Inventory;
    NODE_DEVICE_LIST_CAPS = 117, "virNodeDeviceListCaps", Read, Inventory;
    NODE_DEVICE_CREATE_XML = 123, "virNodeDeviceCreateXML", Write, Inventory;
    CONNECT_LIST_ALL_NODE_DEVICES = 285, "virConnectListAllNodeDevices", Read, Inventory;
    NODE_DEVICE_DEFINE_XML = 428, "virNodeDeviceDefineXML", Write, Inventory;
    // Host interfaces: none.
    CONNECT_NUM_OF_INTERFACES = 126, "virConnectNumOfInterfaces", Read, Inventory;
    CONNECT_LIST_INTERFACES = 127, "virConnectListInterfaces", Read, Inventory;
    INTERFACE_LOOKUP_BY_NAME = 128, "virInterfaceLookupByName", Read, Inventory;
    INTERFACE_LOOKUP_BY_MAC_STRING = 129, "virInterfaceLookupByMACString", Read, Inventory;
    INTERFACE_DEFINE_XML = 131, "virInterfaceDefineXML", Write, Inventory;
    CONNECT_NUM_OF_DEFINED_INTERFACES = 137, "virConnectNumOfDefinedInterfaces", Read, Inventory;
    CONNECT_LIST_DEFINED_INTERFACES = 138, "virConnectListDefinedInterfaces", Read, Inventory;
    CONNECT_LIST_ALL_INTERFACES = 284, "virConnectListAllInterfaces", Read, Inventory;
    // Network filters and their bindings: none.
    NWFILTER_LOOKUP_BY_NAME = 175, "virNWFilterLookupByName", Read, Inventory;
    NWFILTER_LOOKUP_BY_UUID = 176, "virNWFilterLookupByUUID", Read, Inventory;
    CONNECT_NUM_OF_NWFILTERS = 178, "virConnectNumOfNWFilters", Read, Inventory;
    CONNECT_LIST_NWFILTERS = 179, "virConnectListNWFilters", Read, Inventory;
    NWFILTER_DEFINE_XML = 180, "virNWFilterDefineXML", Write, Inventory;
    CONNECT_LIST_ALL_NWFILTERS = 286, "virConnectListAllNWFilters", Read, Inventory;
    NWFILTER_BINDING_LOOKUP_BY_PORT_DEV = 397, "virNWFilterBindingLookupByPortDev", Read, Inventory;
    CONNECT_LIST_ALL_NWFILTER_BINDINGS = 401, "virConnectListAllNWFilterBindings", Read, Inventory;
    NWFILTER_DEFINE_XML_FLAGS = 431, "virNWFilterDefineXMLFlags", Write, Inventory;
    // CPU models.
    CONNECT_COMPARE_CPU = 158, "virConnectCompareCPU", Read, Host;
    CONNECT_BASELINE_CPU = 162, "virConnectBaselineCPU", Read, Host;
    CONNECT_GET_CPU_MODEL_NAMES = 312, "virConnectGetCPUModelNames", Read, Host;
    CONNECT_COMPARE_HYPERVISOR_CPU = 393, "virConnectCompareHypervisorCPU", Read, Host;
    CONNECT_BASELINE_HYPERVISOR_CPU = 394, "virConnectBaselineHypervisorCPU", Read, Host;
    // Streams: the serial console.
    DOMAIN_OPEN_CONSOLE = 201, "virDomainOpenConsole", Write, Streams;
    // Block I/O limits: the disk backend's QoS.
    DOMAIN_SET_BLOCK_IO_TUNE = 252, "virDomainSetBlockIoTune", Write, Devices;
    DOMAIN_GET_BLOCK_IO_TUNE = 253, "virDomainGetBlockIoTune", Read, Devices;
    // Statistics of every domain, or of a list (virDomainListGetStats, client-side).
    CONNECT_GET_ALL_DOMAIN_STATS = 344, "virConnectGetAllDomainStats", Read, Queries;
    // Guest time: no guest agent on bare metal.
    DOMAIN_GET_TIME = 337, "virDomainGetTime", Write, Queries;
    DOMAIN_SET_TIME = 338, "virDomainSetTime", Write, Queries;
    CONNECT_OPEN = 1, "virConnectOpen", Read, Host, pre;
    CONNECT_CLOSE = 2, "virConnectClose", Read, Host, pre;
    CONNECT_GET_TYPE = 3, "virConnectGetType", Read, Host;
    CONNECT_GET_VERSION = 4, "virConnectGetVersion", Read, Host;
    CONNECT_GET_MAX_VCPUS = 5, "virConnectGetMaxVcpus", Read, Host;
    NODE_GET_INFO = 6, "virNodeGetInfo", Read, Host;
    CONNECT_GET_CAPABILITIES = 7, "virConnectGetCapabilities", Read, Host;
    DOMAIN_CREATE = 9, "virDomainCreate", Write, Domains;
    DOMAIN_CREATE_XML = 10, "virDomainCreateXML", Write, Domains;
    DOMAIN_DEFINE_XML = 11, "virDomainDefineXML", Write, Domains;
    DOMAIN_DESTROY = 12, "virDomainDestroy", Write, Domains;
    DOMAIN_GET_XML_DESC = 14, "virDomainGetXMLDesc", Read, Queries;
    DOMAIN_GET_AUTOSTART = 15, "virDomainGetAutostart", Read, Queries;
    DOMAIN_GET_INFO = 16, "virDomainGetInfo", Read, Queries;
    DOMAIN_GET_MAX_MEMORY = 17, "virDomainGetMaxMemory", Read, Queries;
    DOMAIN_GET_MAX_VCPUS = 18, "virDomainGetMaxVcpus", Read, Queries;
    DOMAIN_GET_OS_TYPE = 19, "virDomainGetOSType", Read, Queries;
    DOMAIN_GET_VCPUS = 20, "virDomainGetVcpus", Read, Queries;
    CONNECT_LIST_DEFINED_DOMAINS = 21, "virConnectListDefinedDomains", Read, Domains;
    DOMAIN_LOOKUP_BY_ID = 22, "virDomainLookupByID", Read, Domains;
    DOMAIN_LOOKUP_BY_NAME = 23, "virDomainLookupByName", Read, Domains;
    DOMAIN_LOOKUP_BY_UUID = 24, "virDomainLookupByUUID", Read, Domains;
    CONNECT_NUM_OF_DEFINED_DOMAINS = 25, "virConnectNumOfDefinedDomains", Read, Domains;
    DOMAIN_REBOOT = 27, "virDomainReboot", Write, Domains;
    DOMAIN_RESUME = 28, "virDomainResume", Write, Domains;
    DOMAIN_SET_AUTOSTART = 29, "virDomainSetAutostart", Write, Queries;
    DOMAIN_SHUTDOWN = 33, "virDomainShutdown", Write, Domains;
    DOMAIN_SUSPEND = 34, "virDomainSuspend", Write, Domains;
    DOMAIN_UNDEFINE = 35, "virDomainUndefine", Write, Domains;
    CONNECT_LIST_DOMAINS = 37, "virConnectListDomains", Read, Domains;
    CONNECT_NUM_OF_DOMAINS = 51, "virConnectNumOfDomains", Read, Domains;
    DOMAIN_SAVE = 55, "virDomainSave", Write, Domains;
    CONNECT_GET_HOSTNAME = 59, "virConnectGetHostname", Write, Host;
    CONNECT_SUPPORTS_FEATURE = 60, "virConnectSupportsFeature", Read, Host, pre;
    AUTH_LIST = 66, "virConnectAuthList", Read, Host, pre;
    NODE_GET_CELLS_FREE_MEMORY = 101, "virNodeGetCellsFreeMemory", Read, Host;
    NODE_GET_FREE_MEMORY = 102, "virNodeGetFreeMemory", Read, Host;
    CONNECT_GET_URI = 110, "virConnectGetURI", Read, Host;
    DOMAIN_GET_SECURITY_LABEL = 121, "virDomainGetSecurityLabel", Read, Secrets;
    NODE_GET_SECURITY_MODEL = 122, "virNodeGetSecurityModel", Read, Host;
    CONNECT_IS_SECURE = 149, "virConnectIsSecure", Read, Host;
    DOMAIN_IS_ACTIVE = 150, "virDomainIsActive", Read, Queries;
    DOMAIN_IS_PERSISTENT = 151, "virDomainIsPersistent", Read, Queries;
    CONNECT_GET_LIB_VERSION = 157, "virConnectGetLibVersion", Read, Host;
    DOMAIN_MEMORY_STATS = 159, "virDomainMemoryStats", Read, Queries;
    DOMAIN_GET_JOB_INFO = 163, "virDomainGetJobInfo", Read, Queries;
    CONNECT_DOMAIN_EVENT_REGISTER_ANY = 167, "virConnectDomainEventRegisterAny", Read, Events;
    CONNECT_DOMAIN_EVENT_DEREGISTER_ANY = 168, "virConnectDomainEventDeregisterAny", Read, Events;
    DOMAIN_MANAGED_SAVE = 182, "virDomainManagedSave", Write, Domains;
    DOMAIN_HAS_MANAGED_SAVE_IMAGE = 183, "virDomainHasManagedSaveImage", Read, Queries;
    DOMAIN_MANAGED_SAVE_REMOVE = 184, "virDomainManagedSaveRemove", Write, Domains;
    DOMAIN_SNAPSHOT_CREATE_XML = 185, "virDomainSnapshotCreateXML", Write, Domains;
    DOMAIN_SNAPSHOT_NUM = 187, "virDomainSnapshotNum", Read, Queries;
    DOMAIN_IS_UPDATED = 202, "virDomainIsUpdated", Read, Queries;
    DOMAIN_CREATE_WITH_FLAGS = 196, "virDomainCreateWithFlags", Write, Domains;
    CONNECT_GET_SYSINFO = 203, "virConnectGetSysinfo", Read, Host;
    DOMAIN_GET_STATE = 212, "virDomainGetState", Read, Queries;
    NODE_GET_CPU_STATS = 227, "virNodeGetCPUStats", Read, Host;
    DOMAIN_UNDEFINE_FLAGS = 231, "virDomainUndefineFlags", Write, Domains;
    DOMAIN_SAVE_FLAGS = 232, "virDomainSaveFlags", Write, Domains;
    DOMAIN_DESTROY_FLAGS = 234, "virDomainDestroyFlags", Write, Domains;
    DOMAIN_RESET = 245, "virDomainReset", Write, Domains;
    DOMAIN_SHUTDOWN_FLAGS = 258, "virDomainShutdownFlags", Write, Domains;
    DOMAIN_SET_METADATA = 264, "virDomainSetMetadata", Write, Secrets;
    DOMAIN_GET_METADATA = 265, "virDomainGetMetadata", Read, Secrets;
    CONNECT_LIST_ALL_DOMAINS = 273, "virConnectListAllDomains", Read, Domains;
    NODE_GET_CPU_MAP = 293, "virNodeGetCPUMap", Read, Host;
    DOMAIN_GET_JOB_STATS = 298, "virDomainGetJobStats", Read, Queries;
    CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY = 316, "virConnectDomainEventRegisterAny", Read, Events;
    CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY = 317, "virConnectDomainEventDeregisterAny", Read, Events;
    CONNECT_GET_DOMAIN_CAPABILITIES = 342, "virConnectGetDomainCapabilities", Write, Host;
    DOMAIN_DEFINE_XML_FLAGS = 350, "virDomainDefineXMLFlags", Write, Domains;
    CONNECT_REGISTER_CLOSE_CALLBACK = 360, "virConnectRegisterCloseCallback", Read, Host;
    CONNECT_UNREGISTER_CLOSE_CALLBACK = 361, "virConnectUnregisterCloseCallback", Read, Host;
    DOMAIN_GET_MESSAGES = 426, "virDomainGetMessages", Read, Queries;
    DOMAIN_ATTACH_DEVICE = 8, "virDomainAttachDevice", Write, Devices;
    DOMAIN_DETACH_DEVICE = 13, "virDomainDetachDevice", Write, Devices;
    DOMAIN_BLOCK_STATS = 64, "virDomainBlockStats", Read, Devices;
    DOMAIN_INTERFACE_STATS = 65, "virDomainInterfaceStats", Read, Devices;
    CONNECT_NUM_OF_SECRETS = 139, "virConnectNumOfSecrets", Read, Secrets;
    CONNECT_LIST_SECRETS = 140, "virConnectListSecrets", Read, Secrets;
    SECRET_LOOKUP_BY_UUID = 141, "virSecretLookupByUUID", Read, Secrets;
    SECRET_DEFINE_XML = 142, "virSecretDefineXML", Write, Secrets;
    SECRET_GET_XML_DESC = 143, "virSecretGetXMLDesc", Read, Secrets;
    SECRET_SET_VALUE = 144, "virSecretSetValue", Write, Secrets;
    SECRET_GET_VALUE = 145, "virSecretGetValue", Write, Secrets;
    SECRET_UNDEFINE = 146, "virSecretUndefine", Write, Secrets;
    SECRET_LOOKUP_BY_USAGE = 147, "virSecretLookupByUsage", Read, Secrets;
    DOMAIN_ATTACH_DEVICE_FLAGS = 160, "virDomainAttachDeviceFlags", Write, Devices;
    DOMAIN_DETACH_DEVICE_FLAGS = 161, "virDomainDetachDeviceFlags", Write, Devices;
    DOMAIN_UPDATE_DEVICE_FLAGS = 174, "virDomainUpdateDeviceFlags", Write, Devices;
    DOMAIN_GET_BLOCK_INFO = 194, "virDomainGetBlockInfo", Read, Devices;
    DOMAIN_BLOCK_STATS_FLAGS = 243, "virDomainBlockStatsFlags", Read, Devices;
    DOMAIN_BLOCK_RESIZE = 251, "virDomainBlockResize", Write, Devices;
    CONNECT_LIST_ALL_SECRETS = 287, "virConnectListAllSecrets", Read, Secrets;
    DOMAIN_DETACH_DEVICE_ALIAS = 392, "virDomainDetachDeviceAlias", Write, Devices;
    // Impossible for bare metal: answered with VIR_ERR_OPERATION_UNSUPPORTED (see `impossible`).
    DOMAIN_CORE_DUMP = 53, "virDomainCoreDump", Write, Unsupported;
    DOMAIN_RESTORE = 54, "virDomainRestore", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE = 61, "virDomainMigratePrepare", Write, Unsupported;
    DOMAIN_MIGRATE_PERFORM = 62, "virDomainMigratePerform", Write, Unsupported;
    DOMAIN_MIGRATE_FINISH = 63, "virDomainMigrateFinish", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE2 = 108, "virDomainMigratePrepare2", Write, Unsupported;
    DOMAIN_MIGRATE_FINISH2 = 109, "virDomainMigrateFinish2", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE_TUNNEL = 148, "virDomainMigratePrepareTunnel", Write, Unsupported;
    DOMAIN_MIGRATE_BEGIN3 = 213, "virDomainMigrateBegin3", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE3 = 214, "virDomainMigratePrepare3", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE_TUNNEL3 = 215, "virDomainMigratePrepareTunnel3", Write, Unsupported;
    DOMAIN_MIGRATE_PERFORM3 = 216, "virDomainMigratePerform3", Write, Unsupported;
    DOMAIN_MIGRATE_FINISH3 = 217, "virDomainMigrateFinish3", Write, Unsupported;
    DOMAIN_MIGRATE_CONFIRM3 = 218, "virDomainMigrateConfirm3", Write, Unsupported;
    DOMAIN_RESTORE_FLAGS = 233, "virDomainRestoreFlags", Write, Unsupported;
    DOMAIN_MIGRATE_BEGIN3_PARAMS = 302, "virDomainMigrateBegin3Params", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE3_PARAMS = 303, "virDomainMigratePrepare3Params", Write, Unsupported;
    DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS = 304, "virDomainMigratePrepareTunnel3Params", Write, Unsupported;
    DOMAIN_MIGRATE_PERFORM3_PARAMS = 305, "virDomainMigratePerform3Params", Write, Unsupported;
    DOMAIN_MIGRATE_FINISH3_PARAMS = 306, "virDomainMigrateFinish3Params", Write, Unsupported;
    DOMAIN_MIGRATE_CONFIRM3_PARAMS = 307, "virDomainMigrateConfirm3Params", Write, Unsupported;
    DOMAIN_SAVE_PARAMS = 440, "virDomainSaveParams", Write, Unsupported;
    DOMAIN_RESTORE_PARAMS = 441, "virDomainRestoreParams", Write, Unsupported;
}

/// Procedures a bare-metal server cannot do at all, with what to say: answered with
/// `VIR_ERR_OPERATION_UNSUPPORTED` whatever the arguments.
pub fn impossible(num: i32) -> Option<&'static str> {
    Some(match num {
        DOMAIN_CORE_DUMP => "dumping the memory",
        DOMAIN_RESTORE | DOMAIN_RESTORE_FLAGS | DOMAIN_RESTORE_PARAMS => {
            "restoring a saved memory state"
        }
        DOMAIN_SAVE_PARAMS => "saving the memory state",
        DOMAIN_MIGRATE_PREPARE
        | DOMAIN_MIGRATE_PERFORM
        | DOMAIN_MIGRATE_FINISH
        | DOMAIN_MIGRATE_PREPARE2
        | DOMAIN_MIGRATE_FINISH2
        | DOMAIN_MIGRATE_PREPARE_TUNNEL
        | DOMAIN_MIGRATE_BEGIN3
        | DOMAIN_MIGRATE_PREPARE3
        | DOMAIN_MIGRATE_PREPARE_TUNNEL3
        | DOMAIN_MIGRATE_PERFORM3
        | DOMAIN_MIGRATE_FINISH3
        | DOMAIN_MIGRATE_CONFIRM3
        | DOMAIN_MIGRATE_BEGIN3_PARAMS
        | DOMAIN_MIGRATE_PREPARE3_PARAMS
        | DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS
        | DOMAIN_MIGRATE_PERFORM3_PARAMS
        | DOMAIN_MIGRATE_FINISH3_PARAMS
        | DOMAIN_MIGRATE_CONFIRM3_PARAMS => "migrating a running server to another host",
        _ => return None,
    })
}

/// Server → client event messages.
#[allow(missing_docs)]
pub mod msg {
    pub const DOMAIN_EVENT_LIFECYCLE: i32 = 107;
    pub const DOMAIN_EVENT_REBOOT: i32 = 169;
    pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: i32 = 318;
    pub const DOMAIN_EVENT_CALLBACK_REBOOT: i32 = 319;
    pub const DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED: i32 = 333;
    pub const DOMAIN_EVENT_CALLBACK_DEVICE_ADDED: i32 = 354;
    pub const DOMAIN_EVENT_CALLBACK_DEVICE_REMOVAL_FAILED: i32 = 367;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for &p in ALL {
            assert!(seen.insert(p), "duplicate proc {p}");
            let i = info(p).unwrap();
            assert_eq!(i.num, p);
            assert!(i.api.starts_with("vir"));
        }
        assert!(info(CONNECT_OPEN).unwrap().before_open);
        assert!(!info(DOMAIN_CREATE).unwrap().before_open);
        assert_eq!(info(DOMAIN_CREATE).unwrap().access, Access::Write);
        assert!(info(100_000).is_none());
    }
}
