//! Connections and dispatch: listeners (unix rw and ro, TLS, TCP; bound or passed by systemd),
//! per-connection reader/writer tasks, concurrent calls matched by serial, keepalive, events.

pub mod client;
pub(crate) mod dispatch;
pub mod listen;
pub mod server;
pub mod tls;
