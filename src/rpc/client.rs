//! Per-connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::driver::Driver;
use crate::events::{DomainEvent, EventKind};
use crate::protocol::header::{frame_with, Header, MessageType, PROTOCOL_VERSION, REMOTE_PROGRAM};
use crate::protocol::procs::msg;
use crate::protocol::types::{
    CallbackDeviceAliasMsg, CallbackDomMsg, CallbackLifecycleMsg, DeviceAliasMsg, Dom, Domain,
    LifecycleMsg,
};

/// Frames a connection may have queued for writing before it counts as too slow.
pub const OUT_QUEUE: usize = 2048;

/// An event registration.
#[derive(Debug, Clone)]
pub struct Callback {
    /// `virDomainEventID`.
    pub event_id: i32,
    /// Only events of this domain, when set.
    pub dom: Option<Uuid>,
    /// Registered through the legacy (non-callback) procedure: messages carry no callbackID.
    pub legacy: bool,
}

/// Mutable connection state (short lock, never held across `.await`).
#[derive(Debug, Default)]
pub struct ClientState {
    /// CONNECT_OPEN done.
    pub opened: bool,
    /// Read-only connection (the ro socket, or the client asked).
    pub readonly: bool,
    /// Event callbacks by callbackID.
    pub callbacks: HashMap<i32, Callback>,
    /// Next callbackID.
    pub next_callback: i32,
    /// Close callback registered.
    pub close_callback: bool,
    /// The client asked whether keepalive is supported (it will answer our PINGs).
    pub keepalive: bool,
    /// Runs started with `VIR_DOMAIN_START_AUTODESTROY` (uuid, id): destroyed when this
    /// connection closes.
    pub autodestroy: Vec<(Uuid, i32)>,
}

/// One client connection.
pub struct Client {
    /// Connection number, for logs.
    pub id: u64,
    /// Came in on the read-only socket.
    pub ro_socket: bool,
    /// State.
    pub st: Mutex<ClientState>,
    /// Outbound frames.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// The driver.
    pub driver: Arc<Driver>,
    events_running: AtomicBool,
    /// Set when the connection must close (slow event consumer, protocol violation).
    pub closing: tokio::sync::Notify,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish()
    }
}

impl Client {
    /// A new connection.
    pub fn new(id: u64, ro_socket: bool, tx: mpsc::Sender<Vec<u8>>, driver: Arc<Driver>) -> Self {
        Client {
            id,
            ro_socket,
            st: Mutex::new(ClientState {
                readonly: ro_socket,
                next_callback: 1,
                ..Default::default()
            }),
            tx,
            driver,
            events_running: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
        }
    }

    /// Runs `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut ClientState) -> T) -> T {
        f(&mut self.st.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a frame; a full queue means the client is not reading: it is disconnected.
    pub fn send(&self, frame: Vec<u8>) {
        if self.tx.try_send(frame).is_err() {
            tracing::warn!(
                client = self.id,
                "client is not reading its messages; disconnecting"
            );
            self.closing.notify_one();
        }
    }

    /// Starts forwarding domain events to this client (once).
    pub fn ensure_event_forwarding(self: &Arc<Self>) {
        if self.events_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut rx = self.driver.events.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if let Some(c) = me.upgrade() {
                            tracing::warn!(
                                client = c.id,
                                lost = n,
                                "client fell behind on events; disconnecting"
                            );
                            c.closing.notify_one();
                        }
                        return;
                    }
                    Err(_) => return,
                };
                let Some(c) = me.upgrade() else { return };
                for f in c.event_frames(&ev) {
                    c.send(f);
                }
            }
        });
    }

    /// The messages one event produces for this client's registrations.
    pub fn event_frames(&self, ev: &DomainEvent) -> Vec<Vec<u8>> {
        let eid = ev.kind.event_id();
        let targets: Vec<(i32, bool)> = self.with(|s| {
            let mut v: Vec<(i32, bool)> = s
                .callbacks
                .iter()
                .filter(|(_, cb)| cb.event_id == eid && cb.dom.is_none_or(|u| u == ev.uuid))
                .map(|(id, cb)| (*id, cb.legacy))
                .collect();
            v.sort_unstable();
            v
        });
        let dom = Domain {
            name: ev.name.clone(),
            uuid: *ev.uuid.as_bytes(),
            id: ev.id,
        };
        let mut out = Vec::new();
        for (cb, legacy) in targets {
            let f = match (&ev.kind, legacy) {
                (EventKind::Lifecycle { event, detail }, false) => frame_with(
                    &event_header(msg::DOMAIN_EVENT_CALLBACK_LIFECYCLE),
                    &CallbackLifecycleMsg {
                        callback_id: cb,
                        msg: LifecycleMsg {
                            dom: dom.clone(),
                            event: *event,
                            detail: *detail,
                        },
                    },
                ),
                (EventKind::Lifecycle { event, detail }, true) => frame_with(
                    &event_header(msg::DOMAIN_EVENT_LIFECYCLE),
                    &LifecycleMsg {
                        dom: dom.clone(),
                        event: *event,
                        detail: *detail,
                    },
                ),
                (EventKind::Reboot, false) => frame_with(
                    &event_header(msg::DOMAIN_EVENT_CALLBACK_REBOOT),
                    &CallbackDomMsg {
                        callback_id: cb,
                        dom: dom.clone(),
                    },
                ),
                (EventKind::Reboot, true) => frame_with(
                    &event_header(msg::DOMAIN_EVENT_REBOOT),
                    &Dom { dom: dom.clone() },
                ),
                (
                    EventKind::DeviceAdded(a)
                    | EventKind::DeviceRemoved(a)
                    | EventKind::DeviceRemovalFailed(a),
                    false,
                ) => {
                    let p = match ev.kind {
                        EventKind::DeviceAdded(_) => msg::DOMAIN_EVENT_CALLBACK_DEVICE_ADDED,
                        EventKind::DeviceRemoved(_) => msg::DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED,
                        _ => msg::DOMAIN_EVENT_CALLBACK_DEVICE_REMOVAL_FAILED,
                    };
                    frame_with(
                        &event_header(p),
                        &CallbackDeviceAliasMsg {
                            callback_id: cb,
                            msg: DeviceAliasMsg {
                                dom: dom.clone(),
                                dev_alias: a.clone(),
                            },
                        },
                    )
                }
                // Legacy registrations are only accepted for lifecycle and reboot.
                _ => continue,
            };
            out.push(f);
        }
        out
    }
}

/// Header of an event message (libvirtd sends serial 1; clients ignore it).
fn event_header(proc_: i32) -> Header {
    Header {
        prog: REMOTE_PROGRAM,
        vers: PROTOCOL_VERSION,
        proc_,
        mtype: MessageType::Message as u32,
        serial: 1,
        status: 0,
    }
}
