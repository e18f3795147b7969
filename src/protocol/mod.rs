//! The libvirt remote protocol on the wire: XDR, headers, framing, procedures and structs.
//! Nothing here knows about domains or does I/O.

pub mod header;
pub mod procs;
pub mod types;
pub mod xdr;
