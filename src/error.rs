//! libvirt errors: the frozen numeric codes (`virErrorNumber`, `virErrorDomain`) and the
//! finished, user-visible message texts. Clients show `message` verbatim and test `code`,
//! so every failure the daemon reports is built here.

use std::fmt;

/// `virErrorNumber` values used by metalvirt.
#[allow(missing_docs)]
pub mod code {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_SUPPORT: i32 = 3;
    pub const NO_CONNECT: i32 = 5;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_FAILED: i32 = 9;
    pub const XML_ERROR: i32 = 27;
    pub const OPERATION_DENIED: i32 = 29;
    pub const RPC: i32 = 39;
    pub const NO_DOMAIN: i32 = 42;
    pub const NO_NETWORK: i32 = 43;
    pub const NO_STORAGE_POOL: i32 = 49;
    pub const NO_STORAGE_VOL: i32 = 50;
    pub const NO_NODE_DEVICE: i32 = 53;
    pub const AUTH_FAILED: i32 = 45;
    pub const OPERATION_INVALID: i32 = 55;
    pub const NO_INTERFACE: i32 = 57;
    pub const NO_NWFILTER: i32 = 62;
    pub const INVALID_SECRET: i32 = 65;
    pub const NO_SECRET: i32 = 66;
    pub const CONFIG_UNSUPPORTED: i32 = 67;
    pub const OPERATION_TIMEOUT: i32 = 68;
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    pub const OPERATION_ABORTED: i32 = 78;
    pub const NO_DOMAIN_METADATA: i32 = 80;
    pub const OVERFLOW: i32 = 82;
    pub const CPU_INCOMPATIBLE: i32 = 91;
    pub const OPERATION_UNSUPPORTED: i32 = 84;
    pub const DEVICE_MISSING: i32 = 99;
    pub const NO_NWFILTER_BINDING: i32 = 101;
}

/// `virErrorDomain` values used by metalvirt.
#[allow(missing_docs)]
pub mod from {
    pub const NONE: i32 = 0;
    pub const XML: i32 = 5;
    pub const RPC: i32 = 7;
    pub const QEMU: i32 = 10;
    pub const REMOTE: i32 = 13;
    pub const STORAGE: i32 = 18;
    pub const NETWORK: i32 = 19;
    pub const DOMAIN: i32 = 20;
    pub const NODEDEV: i32 = 22;
    pub const INTERFACE: i32 = 26;
    pub const SECRET: i32 = 30;
    pub const CPU: i32 = 31;
    pub const NWFILTER: i32 = 33;
}

/// The kinds of host objects a lookup can miss (see [`VirError::not_found`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `VIR_ERR_NO_NETWORK`.
    Network,
    /// `VIR_ERR_NO_STORAGE_POOL`.
    StoragePool,
    /// `VIR_ERR_NO_STORAGE_VOL`.
    StorageVol,
    /// `VIR_ERR_NO_NODE_DEVICE`.
    NodeDevice,
    /// `VIR_ERR_NO_INTERFACE`.
    Interface,
    /// `VIR_ERR_NO_NWFILTER` (always from `VIR_FROM_NWFILTER`: the client renumbers codes
    /// 61–63 from any other error domain).
    NwFilter,
    /// `VIR_ERR_NO_NWFILTER_BINDING`.
    NwFilterBinding,
}

/// `VIR_ERR_ERROR`.
pub const LEVEL_ERROR: i32 = 2;

/// A libvirt error as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirError {
    /// `virErrorNumber`.
    pub code: i32,
    /// `virErrorDomain`.
    pub domain: i32,
    /// The finished message, prefix included.
    pub message: String,
}

impl fmt::Display for VirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VirError {}

/// Result type of driver and dispatch code.
pub type VirResult<T> = Result<T, VirError>;

impl VirError {
    /// An error with an explicit code, domain and finished message. Private: every
    /// message the daemon sends is composed by one of the named constructors below.
    fn new(code: i32, domain: i32, message: impl Into<String>) -> Self {
        VirError {
            code,
            domain,
            message: message.into(),
        }
    }

    /// `VIR_ERR_NO_DOMAIN` for a name lookup.
    pub fn no_domain_name(name: &str) -> Self {
        Self::new(
            code::NO_DOMAIN,
            from::QEMU,
            format!("Domain not found: no domain with matching name '{name}'"),
        )
    }

    /// `VIR_ERR_NO_DOMAIN` for a uuid lookup; `name` is added when the caller knows it.
    pub fn no_domain_uuid(uuid: &uuid::Uuid, name: Option<&str>) -> Self {
        let msg = match name {
            Some(n) => format!("Domain not found: no domain with matching uuid '{uuid}' ({n})"),
            None => format!("Domain not found: no domain with matching uuid '{uuid}'"),
        };
        Self::new(code::NO_DOMAIN, from::QEMU, msg)
    }

    /// `VIR_ERR_NO_DOMAIN` for an id lookup.
    pub fn no_domain_id(id: i32) -> Self {
        Self::new(
            code::NO_DOMAIN,
            from::QEMU,
            format!("Domain not found: no domain with matching id {id}"),
        )
    }

    /// `VIR_ERR_OPERATION_INVALID` (wrong state).
    pub fn operation_invalid(detail: &str) -> Self {
        Self::new(
            code::OPERATION_INVALID,
            from::DOMAIN,
            format!("Requested operation is not valid: {detail}"),
        )
    }

    /// `VIR_ERR_XML_ERROR`.
    pub fn xml(detail: &str) -> Self {
        Self::new(
            code::XML_ERROR,
            from::DOMAIN,
            format!("XML error: {detail}"),
        )
    }

    /// `VIR_ERR_CONFIG_UNSUPPORTED`.
    pub fn config_unsupported(detail: &str) -> Self {
        Self::new(
            code::CONFIG_UNSUPPORTED,
            from::QEMU,
            format!("unsupported configuration: {detail}"),
        )
    }

    /// `VIR_ERR_OPERATION_UNSUPPORTED`.
    pub fn operation_unsupported(detail: &str) -> Self {
        Self::new(
            code::OPERATION_UNSUPPORTED,
            from::QEMU,
            format!("Operation not supported: {detail}"),
        )
    }

    /// `VIR_ERR_OPERATION_FAILED`.
    pub fn operation_failed(detail: &str) -> Self {
        Self::new(
            code::OPERATION_FAILED,
            from::QEMU,
            format!("operation failed: {detail}"),
        )
    }

    /// `VIR_ERR_AUTH_FAILED` (a peer such as a BMC rejected our credentials).
    pub fn auth_failed(detail: &str) -> Self {
        Self::new(
            code::AUTH_FAILED,
            from::QEMU,
            format!("authentication failed: {detail}"),
        )
    }

    /// `VIR_ERR_OPERATION_TIMEOUT`.
    pub fn operation_timeout(detail: &str) -> Self {
        Self::new(
            code::OPERATION_TIMEOUT,
            from::QEMU,
            format!("Timed out during operation: {detail}"),
        )
    }

    /// `VIR_ERR_OPERATION_ABORTED`.
    pub fn operation_aborted(detail: &str) -> Self {
        Self::new(
            code::OPERATION_ABORTED,
            from::QEMU,
            format!("operation aborted: {detail}"),
        )
    }

    /// `VIR_ERR_OPERATION_DENIED` for a mutating API on a read-only connection.
    pub fn read_only(api: &str) -> Self {
        Self::new(
            code::OPERATION_DENIED,
            from::DOMAIN,
            format!("operation forbidden: read only access prevents {api}"),
        )
    }

    /// `VIR_ERR_INTERNAL_ERROR`. Never use it with domain RPC/REMOTE for ordinary failures:
    /// nova reads that combination as a broken connection.
    pub fn internal(detail: &str) -> Self {
        Self::new(
            code::INTERNAL_ERROR,
            from::QEMU,
            format!("internal error: {detail}"),
        )
    }

    /// `VIR_ERR_INVALID_ARG`.
    pub fn invalid_arg(detail: &str) -> Self {
        Self::new(
            code::INVALID_ARG,
            from::QEMU,
            format!("invalid argument: {detail}"),
        )
    }

    /// `VIR_ERR_ARGUMENT_UNSUPPORTED`.
    pub fn argument_unsupported(detail: &str) -> Self {
        Self::new(
            code::ARGUMENT_UNSUPPORTED,
            from::QEMU,
            format!("argument unsupported: {detail}"),
        )
    }

    /// libvirt's `virCheckFlags` failure: no prefix, names the public API.
    pub fn unsupported_flags(flags: u32, api: &str) -> Self {
        Self::new(
            code::INVALID_ARG,
            from::QEMU,
            format!("unsupported flags (0x{flags:x}) in function {api}"),
        )
    }

    /// `VIR_ERR_DEVICE_MISSING`.
    pub fn device_missing(detail: &str) -> Self {
        Self::new(
            code::DEVICE_MISSING,
            from::DOMAIN,
            format!("device not found: {detail}"),
        )
    }

    /// `VIR_ERR_NO_SECRET`.
    pub fn no_secret(detail: &str) -> Self {
        Self::new(
            code::NO_SECRET,
            from::SECRET,
            format!("Secret not found: {detail}"),
        )
    }

    /// `VIR_ERR_INVALID_SECRET`.
    pub fn invalid_secret(detail: &str) -> Self {
        Self::new(
            code::INVALID_SECRET,
            from::SECRET,
            format!("Invalid secret: {detail}"),
        )
    }

    /// `VIR_ERR_RPC`: protocol-level failures (no prefix).
    pub fn rpc(msg: &str) -> Self {
        Self::new(code::RPC, from::RPC, msg)
    }

    /// `VIR_ERR_NO_SUPPORT` for an API metalvirt deliberately does not offer (libvirt's text
    /// for a driver without the method, naming the API, then why), from `domain`.
    pub fn no_support(api: &str, why: &str, domain: i32) -> Self {
        Self::new(
            code::NO_SUPPORT,
            domain,
            format!("this function is not supported by the connection driver: {api}: {why}"),
        )
    }

    /// A lookup of a network, storage pool or volume, node device, host interface or network
    /// filter (binding) that found nothing: libvirt's code, error domain and prefix for that
    /// kind of object, then `detail` ("no network with matching name 'x'").
    pub fn not_found(kind: Missing, detail: &str) -> Self {
        let (code, domain, prefix) = match kind {
            Missing::Network => (code::NO_NETWORK, from::NETWORK, "Network not found"),
            Missing::StoragePool => (
                code::NO_STORAGE_POOL,
                from::STORAGE,
                "Storage pool not found",
            ),
            Missing::StorageVol => (
                code::NO_STORAGE_VOL,
                from::STORAGE,
                "Storage volume not found",
            ),
            Missing::NodeDevice => (code::NO_NODE_DEVICE, from::NODEDEV, "Node device not found"),
            Missing::Interface => (code::NO_INTERFACE, from::INTERFACE, "Interface not found"),
            Missing::NwFilter => (
                code::NO_NWFILTER,
                from::NWFILTER,
                "Network filter not found",
            ),
            Missing::NwFilterBinding => (
                code::NO_NWFILTER_BINDING,
                from::NWFILTER,
                "Network filter binding not found",
            ),
        };
        Self::new(code, domain, format!("{prefix}: {detail}"))
    }

    /// `VIR_ERR_NO_DOMAIN_METADATA`.
    pub fn no_metadata() -> Self {
        Self::new(
            code::NO_DOMAIN_METADATA,
            from::DOMAIN,
            "metadata not found: Requested metadata element is not present",
        )
    }

    /// The same error reported by another `virErrorDomain` (libvirt raises e.g. secret
    /// errors from `VIR_FROM_SECRET`, API argument checks from `VIR_FROM_DOMAIN`).
    pub fn in_domain(mut self, domain: i32) -> Self {
        self.domain = domain;
        self
    }

    /// `VIR_ERR_INVALID_ARG` raised by a public API's argument check (`virCheckNonNull…`):
    /// no prefix, the message names the argument and the API.
    pub fn api_arg(msg: &str) -> Self {
        Self::new(code::INVALID_ARG, from::DOMAIN, msg)
    }

    /// `VIR_ERR_INVALID_ARG` for a metadata type outside `virDomainMetadataType`.
    pub fn unknown_metadata_type(kind: impl fmt::Display) -> Self {
        Self::invalid_arg(&format!("unknown metadata type '{kind}'")).in_domain(from::DOMAIN)
    }

    /// `VIR_ERR_INTERNAL_ERROR` from the RPC layer. Only for what libvirtd's RPC layer
    /// itself refuses (a connection opened twice, callbacks it does not track): nova reads
    /// this combination as a broken connection.
    pub fn rpc_internal(detail: &str) -> Self {
        Self::internal(detail).in_domain(from::RPC)
    }

    /// `VIR_ERR_NO_CONNECT`: no driver serves the URI a client opened.
    pub fn no_connect(uri: &str) -> Self {
        Self::new(
            code::NO_CONNECT,
            from::NONE,
            format!("no connection driver available for {uri}"),
        )
    }

    /// `VIR_ERR_OPERATION_DENIED` for something other than read-only access.
    pub fn operation_denied(detail: &str) -> Self {
        Self::new(
            code::OPERATION_DENIED,
            from::DOMAIN,
            format!("operation forbidden: {detail}"),
        )
    }

    /// `VIR_ERR_XML_ERROR` for a document the RNG schema rejects (`--validate`).
    pub fn schema_invalid(detail: &str) -> Self {
        Self::new(
            code::XML_ERROR,
            from::DOMAIN,
            format!("XML document failed to validate against schema: {detail}"),
        )
    }

    /// `VIR_ERR_CPU_INCOMPATIBLE` (a CPU comparison asked to fail when incompatible).
    pub fn cpu_incompatible(detail: &str) -> Self {
        Self::new(
            code::CPU_INCOMPATIBLE,
            from::CPU,
            format!("the CPU is incompatible with host CPU: {detail}"),
        )
    }

    /// `VIR_ERR_OVERFLOW`.
    pub fn overflow(detail: &str) -> Self {
        Self::new(
            code::OVERFLOW,
            from::QEMU,
            format!("numerical overflow: {detail}"),
        )
    }

    /// Checks that `flags` has no bits outside `allowed`.
    pub fn check_flags(flags: u32, allowed: u32, api: &str) -> VirResult<()> {
        if flags & !allowed != 0 {
            return Err(Self::unsupported_flags(flags & !allowed, api));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_libvirt_prefixes() {
        assert_eq!(
            VirError::no_domain_name("x").message,
            "Domain not found: no domain with matching name 'x'"
        );
        assert_eq!(
            VirError::operation_invalid("domain is not running").message,
            "Requested operation is not valid: domain is not running"
        );
        let e = VirError::check_flags(0x5, 0x1, "virDomainDestroyFlags").unwrap_err();
        assert_eq!(e.code, code::INVALID_ARG);
        assert_eq!(
            e.message,
            "unsupported flags (0x4) in function virDomainDestroyFlags"
        );
        assert!(VirError::check_flags(1, 3, "x").is_ok());
    }

    #[test]
    fn another_error_domain_keeps_code_and_message() {
        let e = VirError::internal("cannot change private flag").in_domain(from::SECRET);
        assert_eq!(
            (e.code, e.domain, e.message.as_str()),
            (
                code::INTERNAL_ERROR,
                from::SECRET,
                "internal error: cannot change private flag"
            )
        );
        let e = VirError::rpc_internal("connection already open");
        assert_eq!((e.code, e.domain), (code::INTERNAL_ERROR, from::RPC));
        let e = VirError::unknown_metadata_type(7);
        assert_eq!(
            (e.code, e.domain, e.message.as_str()),
            (
                code::INVALID_ARG,
                from::DOMAIN,
                "invalid argument: unknown metadata type '7'"
            )
        );
        assert_eq!(
            VirError::api_arg("uri must be NULL").message,
            "uri must be NULL"
        );
    }
}
