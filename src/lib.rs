//! metalvirt: bare-metal servers behind DPUs, served to libvirt clients (virsh,
//! libvirt-python, OpenStack nova) over the libvirt remote protocol.
//!
//! Module map (dependencies point downwards only):
//! - [`rpc`]: sockets, connections, dispatch (the only place driver results become wire data)
//! - [`protocol`]: XDR, headers, procedure table, wire structs — no I/O, no domain logic
//! - [`driver`]: registry, lifecycle state machine, hardware pipelines, recovery
//! - [`domain`]: the domain XML model — pure data
//! - [`backend`]: hardware traits and their implementations (the simulated lab today)
//! - [`events`], [`persist`], [`config`], [`host`], [`error`]

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
pub mod secrets;

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the daemon started (first call).
pub fn uptime_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
