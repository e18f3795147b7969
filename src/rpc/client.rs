//! Per-connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// How a client reached the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// A unix socket.
    #[default]
    Unix,
    /// The TLS listener (a verified client certificate).
    Tls,
    /// The plain TCP listener (`auth_tcp = "none"`): neither encrypted nor authenticated.
    Tcp,
}

/// Who is on the other end of a connection: `SO_PEERCRED` on unix sockets, the address and
/// the certificate's Distinguished Name on TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// How the client connected.
    pub transport: Transport,
    /// User id, when the transport tells it.
    pub uid: Option<u32>,
    /// Process id, when the transport tells it.
    pub pid: Option<i32>,
    /// Network address.
    pub addr: Option<std::net::SocketAddr>,
    /// The client certificate's Distinguished Name.
    pub dn: Option<Arc<str>>,
}

impl Peer {
    /// libvirt's "secure" connection: unix sockets and TLS, not plain TCP.
    pub fn secure(&self) -> bool {
        self.transport != Transport::Tcp
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.pid) {
            (Some(u), Some(p)) => write!(f, "uid {u} pid {p}")?,
            (Some(u), None) => write!(f, "uid {u}")?,
            _ => {}
        }
        match (&self.transport, self.addr) {
            (Transport::Tls, Some(a)) => write!(f, "tls {a}")?,
            (Transport::Tcp, Some(a)) => write!(f, "tcp {a}")?,
            (Transport::Unix, _) if self.uid.is_none() => f.write_str("unknown peer")?,
            _ => {}
        }
        if let Some(dn) = &self.dn {
            write!(f, " dn '{dn}'")?;
        }
        Ok(())
    }
}

/// The outbound side of a connection: frames queued for its writer and the bytes they hold.
/// Replies are bounded by the reader (it stops taking calls while `queued` is above the
/// connection's cap); events cannot be held back, so a client that lets them pile up past
/// the hard limit is disconnected instead.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes queued or being written, not yet taken by the client.
    queued: AtomicUsize,
    /// The most bytes ever queued at once.
    peak: AtomicUsize,
    /// Calls taken and not yet answered.
    inflight: AtomicUsize,
    /// The largest reply of this connection so far: each call in flight is expected to
    /// add that much to the queue.
    max_reply: AtomicUsize,
    /// Above this many queued bytes the reader takes no new calls.
    cap: usize,
    /// Signalled by the writer whenever it has written something.
    drained: tokio::sync::Notify,
    /// Set once the connection must close; every wait of the connection watches it.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Outbox {
    /// A new outbox and the receiving end for its writer.
    pub fn new(cap: usize) -> (Outbox, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let (closing, _) = tokio::sync::watch::channel(false);
        (
            Outbox {
                tx,
                queued: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                inflight: AtomicUsize::new(0),
                max_reply: AtomicUsize::new(0),
                cap,
                drained: tokio::sync::Notify::new(),
                closing,
            },
            rx,
        )
    }

    /// The most bytes this connection ever had queued at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The writer took `n` bytes off the queue.
    pub fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    /// Marks the connection for closing.
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.drained.notify_waiters();
    }

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Calls taken and not yet answered.
    pub fn calls_in_flight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// A call was taken from the client.
    pub fn begin_call(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// A call's reply of `len` bytes was queued.
    pub fn end_call(&self, len: usize) {
        self.max_reply.fetch_max(len, Ordering::AcqRel);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    /// Whether another call may be taken: what is queued plus what the calls in flight are
    /// expected to add (each as much as the largest reply so far) stays within the cap. A
    /// client with nothing queued and nothing in flight may always make one call.
    fn has_room(&self) -> bool {
        let inflight = self.inflight.load(Ordering::Acquire);
        let queued = self.queued();
        if queued == 0 && inflight == 0 {
            return true;
        }
        let expected = inflight.saturating_mul(self.max_reply.load(Ordering::Acquire));
        queued.saturating_add(expected) <= self.cap
    }

    /// Waits until there is room for another call (true), or the connection is closing
    /// (false).
    pub async fn wait_room(&self) -> bool {
        loop {
            // Registered before the checks: a writer that drains between the check and the
            // wait must still wake us (notify_waiters only wakes registered waiters).
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_closing() {
                return false;
            }
            if self.has_room() {
                return true;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed() => return false,
            }
        }
    }

    /// Queues a frame; false when the client is not reading (the queue is full, or, for a
    /// frame that cannot wait like an event, it already holds more than the cap) and must
    /// be disconnected. Replies are not held to the cap here: the reader bounds them.
    fn push(&self, frame: Vec<u8>, bounded: bool) -> bool {
        let n = frame.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if (bounded && before > self.cap) || self.tx.try_send(frame).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.peak.fetch_max(before + n, Ordering::Relaxed);
        true
    }
}

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
    /// Open streams by the serial of the call that opened them: where the client's stream
    /// packets go.
    pub streams: HashMap<u32, tokio::sync::mpsc::Sender<StreamIn>>,
    /// Streams whose opening call has not been answered yet: started once the reply is
    /// queued (stream data must follow it).
    pub pending_streams: HashMap<u32, PendingStream>,
}

/// The task of a stream, waiting for its opening call's reply to be queued.
pub struct PendingStream(pub futures::future::BoxFuture<'static, ()>);

impl std::fmt::Debug for PendingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingStream")
    }
}

/// What a client sends on a stream.
#[derive(Debug)]
pub enum StreamIn {
    /// Data (`VIR_NET_CONTINUE` with bytes).
    Data(Vec<u8>),
    /// `virStreamFinish` (`VIR_NET_OK`).
    Finish,
    /// `virStreamAbort` (`VIR_NET_ERROR`).
    Abort,
}

/// One client connection.
pub struct Client {
    /// Connection number, for logs.
    pub id: u64,
    /// Read-only whatever the client asks: the read-only socket, or a TLS client in
    /// `tls_readonly_dn_list`.
    pub ro_socket: bool,
    /// The process on the other end.
    pub peer: Peer,
    /// State.
    pub st: Mutex<ClientState>,
    /// Outbound frames and their accounting; closing the connection goes through it.
    pub out: Arc<Outbox>,
    /// The driver.
    pub driver: Arc<Driver>,
    events_running: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish()
    }
}

impl Client {
    /// A new connection.
    pub fn new(
        id: u64,
        ro_socket: bool,
        peer: Peer,
        out: Arc<Outbox>,
        driver: Arc<Driver>,
    ) -> Self {
        Client {
            id,
            ro_socket,
            peer,
            st: Mutex::new(ClientState {
                readonly: ro_socket,
                next_callback: 1,
                ..Default::default()
            }),
            out,
            driver,
            events_running: AtomicBool::new(false),
        }
    }

    /// Marks the connection for closing (slow consumer, protocol violation, keepalive).
    pub fn close(&self) {
        self.out.close();
    }

    /// Runs `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut ClientState) -> T) -> T {
        f(&mut self.st.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a frame; a client that lets its queue overflow is not reading: it is
    /// disconnected (and the frame dropped).
    pub fn send(&self, frame: Vec<u8>) {
        self.enqueue(frame, false)
    }

    /// Queues an event (or a keepalive PING): refused once the client holds a full cap of
    /// unread output, since nothing bounds events but the client's reading.
    pub fn send_event(&self, frame: Vec<u8>) {
        self.enqueue(frame, true)
    }

    fn enqueue(&self, frame: Vec<u8>, bounded: bool) {
        if self.out.is_closing() {
            return;
        }
        if !self.out.push(frame, bounded) {
            tracing::warn!(
                client = self.id,
                peer = %self.peer,
                queued = self.out.queued(),
                "client is not reading its messages; disconnecting"
            );
            self.close();
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
                            c.close();
                        }
                        return;
                    }
                    Err(_) => return,
                };
                let Some(c) = me.upgrade() else { return };
                for f in c.event_frames(&ev) {
                    c.send_event(f);
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
