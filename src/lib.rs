//! metalvirt: bare-metal servers behind DPUs, served to libvirt clients (virsh,
//! libvirt-python, OpenStack nova) over the libvirt remote protocol.
//!
//! Module map (dependencies point downwards only; `tests/module_layers.rs` checks it):
//! - [`rpc`]: listeners (unix, TLS, TCP, socket activation), connections, dispatch (the only
//!   place driver results become wire data)
//! - [`host`]: capabilities, node info and other host descriptions
//! - [`driver`]: registry, lifecycle state machine, hardware pipelines, recovery
//! - [`backend`]: hardware traits and their implementations (Redfish, IPMI, SPDK, OVS/OVN, the
//!   simulated lab); [`secrets`]: the secret store
//! - [`domain`]: the domain XML model — pure data
//! - [`protocol`]: XDR, headers, procedure table, wire structs — no I/O, no domain logic;
//!   [`config`]: the configuration file
//! - leaves: [`error`], [`persist`], [`events`], [`secret_value`], [`crash`], [`memory`],
//!   [`cli`]

pub mod backend;
pub mod cli;
pub mod config;
pub mod crash;
pub mod domain;
pub mod driver;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
#[doc(hidden)]
pub mod loadgen;
pub mod memory;
pub mod persist;
pub mod protocol;
pub mod rpc;
pub mod secret_value;
pub mod secrets;

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the daemon started (first call).
pub fn uptime_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
