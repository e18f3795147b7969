//! Connections and dispatch: unix listeners (rw and ro), per-connection reader/writer tasks,
//! concurrent calls matched by serial, keepalive, events.

pub mod client;
pub(crate) mod dispatch;
pub mod server;
