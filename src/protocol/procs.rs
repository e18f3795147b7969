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
}

macro_rules! procs {
    ($($name:ident = $num:literal, $api:literal, $acc:ident $(, $pre:ident)?;)*) => {
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
    CONNECT_OPEN = 1, "virConnectOpen", Read, pre;
    CONNECT_CLOSE = 2, "virConnectClose", Read, pre;
    CONNECT_GET_TYPE = 3, "virConnectGetType", Read;
    CONNECT_GET_VERSION = 4, "virConnectGetVersion", Read;
    CONNECT_GET_MAX_VCPUS = 5, "virConnectGetMaxVcpus", Read;
    NODE_GET_INFO = 6, "virNodeGetInfo", Read;
    CONNECT_GET_CAPABILITIES = 7, "virConnectGetCapabilities", Read;
    DOMAIN_CREATE = 9, "virDomainCreate", Write;
    DOMAIN_CREATE_XML = 10, "virDomainCreateXML", Write;
    DOMAIN_DEFINE_XML = 11, "virDomainDefineXML", Write;
    DOMAIN_DESTROY = 12, "virDomainDestroy", Write;
    DOMAIN_GET_XML_DESC = 14, "virDomainGetXMLDesc", Read;
    DOMAIN_GET_AUTOSTART = 15, "virDomainGetAutostart", Read;
    DOMAIN_GET_INFO = 16, "virDomainGetInfo", Read;
    DOMAIN_GET_MAX_MEMORY = 17, "virDomainGetMaxMemory", Read;
    DOMAIN_GET_MAX_VCPUS = 18, "virDomainGetMaxVcpus", Read;
    DOMAIN_GET_OS_TYPE = 19, "virDomainGetOSType", Read;
    DOMAIN_GET_VCPUS = 20, "virDomainGetVcpus", Read;
    CONNECT_LIST_DEFINED_DOMAINS = 21, "virConnectListDefinedDomains", Read;
    DOMAIN_LOOKUP_BY_ID = 22, "virDomainLookupByID", Read;
    DOMAIN_LOOKUP_BY_NAME = 23, "virDomainLookupByName", Read;
    DOMAIN_LOOKUP_BY_UUID = 24, "virDomainLookupByUUID", Read;
    CONNECT_NUM_OF_DEFINED_DOMAINS = 25, "virConnectNumOfDefinedDomains", Read;
    DOMAIN_REBOOT = 27, "virDomainReboot", Write;
    DOMAIN_RESUME = 28, "virDomainResume", Write;
    DOMAIN_SET_AUTOSTART = 29, "virDomainSetAutostart", Write;
    DOMAIN_SHUTDOWN = 33, "virDomainShutdown", Write;
    DOMAIN_SUSPEND = 34, "virDomainSuspend", Write;
    DOMAIN_UNDEFINE = 35, "virDomainUndefine", Write;
    CONNECT_LIST_DOMAINS = 37, "virConnectListDomains", Read;
    CONNECT_NUM_OF_DOMAINS = 51, "virConnectNumOfDomains", Read;
    DOMAIN_SAVE = 55, "virDomainSave", Write;
    CONNECT_GET_HOSTNAME = 59, "virConnectGetHostname", Write;
    CONNECT_SUPPORTS_FEATURE = 60, "virConnectSupportsFeature", Read, pre;
    AUTH_LIST = 66, "virConnectAuthList", Read, pre;
    NODE_GET_CELLS_FREE_MEMORY = 101, "virNodeGetCellsFreeMemory", Read;
    NODE_GET_FREE_MEMORY = 102, "virNodeGetFreeMemory", Read;
    CONNECT_GET_URI = 110, "virConnectGetURI", Read;
    DOMAIN_GET_SECURITY_LABEL = 121, "virDomainGetSecurityLabel", Read;
    NODE_GET_SECURITY_MODEL = 122, "virNodeGetSecurityModel", Read;
    CONNECT_IS_SECURE = 149, "virConnectIsSecure", Read;
    DOMAIN_IS_ACTIVE = 150, "virDomainIsActive", Read;
    DOMAIN_IS_PERSISTENT = 151, "virDomainIsPersistent", Read;
    CONNECT_GET_LIB_VERSION = 157, "virConnectGetLibVersion", Read;
    DOMAIN_MEMORY_STATS = 159, "virDomainMemoryStats", Read;
    DOMAIN_GET_JOB_INFO = 163, "virDomainGetJobInfo", Read;
    CONNECT_DOMAIN_EVENT_REGISTER_ANY = 167, "virConnectDomainEventRegisterAny", Read;
    CONNECT_DOMAIN_EVENT_DEREGISTER_ANY = 168, "virConnectDomainEventDeregisterAny", Read;
    DOMAIN_MANAGED_SAVE = 182, "virDomainManagedSave", Write;
    DOMAIN_HAS_MANAGED_SAVE_IMAGE = 183, "virDomainHasManagedSaveImage", Read;
    DOMAIN_MANAGED_SAVE_REMOVE = 184, "virDomainManagedSaveRemove", Write;
    DOMAIN_SNAPSHOT_CREATE_XML = 185, "virDomainSnapshotCreateXML", Write;
    DOMAIN_SNAPSHOT_NUM = 187, "virDomainSnapshotNum", Read;
    DOMAIN_IS_UPDATED = 202, "virDomainIsUpdated", Read;
    DOMAIN_CREATE_WITH_FLAGS = 196, "virDomainCreateWithFlags", Write;
    CONNECT_GET_SYSINFO = 203, "virConnectGetSysinfo", Read;
    DOMAIN_GET_STATE = 212, "virDomainGetState", Read;
    NODE_GET_CPU_STATS = 227, "virNodeGetCPUStats", Read;
    DOMAIN_UNDEFINE_FLAGS = 231, "virDomainUndefineFlags", Write;
    DOMAIN_SAVE_FLAGS = 232, "virDomainSaveFlags", Write;
    DOMAIN_DESTROY_FLAGS = 234, "virDomainDestroyFlags", Write;
    DOMAIN_RESET = 245, "virDomainReset", Write;
    DOMAIN_SHUTDOWN_FLAGS = 258, "virDomainShutdownFlags", Write;
    DOMAIN_SET_METADATA = 264, "virDomainSetMetadata", Write;
    DOMAIN_GET_METADATA = 265, "virDomainGetMetadata", Read;
    CONNECT_LIST_ALL_DOMAINS = 273, "virConnectListAllDomains", Read;
    NODE_GET_CPU_MAP = 293, "virNodeGetCPUMap", Read;
    DOMAIN_GET_JOB_STATS = 298, "virDomainGetJobStats", Read;
    CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY = 316, "virConnectDomainEventRegisterAny", Read;
    CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY = 317, "virConnectDomainEventDeregisterAny", Read;
    CONNECT_GET_DOMAIN_CAPABILITIES = 342, "virConnectGetDomainCapabilities", Write;
    DOMAIN_DEFINE_XML_FLAGS = 350, "virDomainDefineXMLFlags", Write;
    CONNECT_REGISTER_CLOSE_CALLBACK = 360, "virConnectRegisterCloseCallback", Read;
    CONNECT_UNREGISTER_CLOSE_CALLBACK = 361, "virConnectUnregisterCloseCallback", Read;
    DOMAIN_GET_MESSAGES = 426, "virDomainGetMessages", Read;
    DOMAIN_ATTACH_DEVICE = 8, "virDomainAttachDevice", Write;
    DOMAIN_DETACH_DEVICE = 13, "virDomainDetachDevice", Write;
    DOMAIN_BLOCK_STATS = 64, "virDomainBlockStats", Read;
    DOMAIN_INTERFACE_STATS = 65, "virDomainInterfaceStats", Read;
    CONNECT_NUM_OF_SECRETS = 139, "virConnectNumOfSecrets", Read;
    CONNECT_LIST_SECRETS = 140, "virConnectListSecrets", Read;
    SECRET_LOOKUP_BY_UUID = 141, "virSecretLookupByUUID", Read;
    SECRET_DEFINE_XML = 142, "virSecretDefineXML", Write;
    SECRET_GET_XML_DESC = 143, "virSecretGetXMLDesc", Read;
    SECRET_SET_VALUE = 144, "virSecretSetValue", Write;
    SECRET_GET_VALUE = 145, "virSecretGetValue", Write;
    SECRET_UNDEFINE = 146, "virSecretUndefine", Write;
    SECRET_LOOKUP_BY_USAGE = 147, "virSecretLookupByUsage", Read;
    DOMAIN_ATTACH_DEVICE_FLAGS = 160, "virDomainAttachDeviceFlags", Write;
    DOMAIN_DETACH_DEVICE_FLAGS = 161, "virDomainDetachDeviceFlags", Write;
    DOMAIN_UPDATE_DEVICE_FLAGS = 174, "virDomainUpdateDeviceFlags", Write;
    DOMAIN_GET_BLOCK_INFO = 194, "virDomainGetBlockInfo", Read;
    DOMAIN_BLOCK_STATS_FLAGS = 243, "virDomainBlockStatsFlags", Read;
    DOMAIN_BLOCK_RESIZE = 251, "virDomainBlockResize", Write;
    CONNECT_LIST_ALL_SECRETS = 287, "virConnectListAllSecrets", Read;
    DOMAIN_DETACH_DEVICE_ALIAS = 392, "virDomainDetachDeviceAlias", Write;
    // Impossible for bare metal: answered with VIR_ERR_OPERATION_UNSUPPORTED (see `impossible`).
    DOMAIN_CORE_DUMP = 53, "virDomainCoreDump", Write;
    DOMAIN_RESTORE = 54, "virDomainRestore", Write;
    DOMAIN_MIGRATE_PREPARE = 61, "virDomainMigratePrepare", Write;
    DOMAIN_MIGRATE_PERFORM = 62, "virDomainMigratePerform", Write;
    DOMAIN_MIGRATE_FINISH = 63, "virDomainMigrateFinish", Write;
    DOMAIN_MIGRATE_PREPARE2 = 108, "virDomainMigratePrepare2", Write;
    DOMAIN_MIGRATE_FINISH2 = 109, "virDomainMigrateFinish2", Write;
    DOMAIN_MIGRATE_PREPARE_TUNNEL = 148, "virDomainMigratePrepareTunnel", Write;
    DOMAIN_MIGRATE_BEGIN3 = 213, "virDomainMigrateBegin3", Write;
    DOMAIN_MIGRATE_PREPARE3 = 214, "virDomainMigratePrepare3", Write;
    DOMAIN_MIGRATE_PREPARE_TUNNEL3 = 215, "virDomainMigratePrepareTunnel3", Write;
    DOMAIN_MIGRATE_PERFORM3 = 216, "virDomainMigratePerform3", Write;
    DOMAIN_MIGRATE_FINISH3 = 217, "virDomainMigrateFinish3", Write;
    DOMAIN_MIGRATE_CONFIRM3 = 218, "virDomainMigrateConfirm3", Write;
    DOMAIN_RESTORE_FLAGS = 233, "virDomainRestoreFlags", Write;
    DOMAIN_MIGRATE_BEGIN3_PARAMS = 302, "virDomainMigrateBegin3Params", Write;
    DOMAIN_MIGRATE_PREPARE3_PARAMS = 303, "virDomainMigratePrepare3Params", Write;
    DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS = 304, "virDomainMigratePrepareTunnel3Params", Write;
    DOMAIN_MIGRATE_PERFORM3_PARAMS = 305, "virDomainMigratePerform3Params", Write;
    DOMAIN_MIGRATE_FINISH3_PARAMS = 306, "virDomainMigrateFinish3Params", Write;
    DOMAIN_MIGRATE_CONFIRM3_PARAMS = 307, "virDomainMigrateConfirm3Params", Write;
    DOMAIN_SAVE_PARAMS = 440, "virDomainSaveParams", Write;
    DOMAIN_RESTORE_PARAMS = 441, "virDomainRestoreParams", Write;
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
