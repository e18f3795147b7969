//! Listeners and the per-connection loop.
//!
//! Per connection: one reader (this task), one writer task fed by a bounded queue, and one
//! task per call. At most `max_client_requests` calls run at once per client; at that limit
//! the reader stops reading (libvirtd's behaviour), so a client cannot queue unbounded work.
//! Keepalive PINGs are answered by the reader itself, so they are never stuck behind calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::client::{Client, Outbox, Peer, StreamIn, Transport};
use super::dispatch;
use super::listen::{Listener, Role, Socket};
use super::tls::Gate;
use crate::driver::Driver;
use crate::error::VirError;
use crate::protocol::header::{
    check_length, frame, frame_with, Header, MessageType, Status, HEADER_LEN, KEEPALIVE_PING,
    KEEPALIVE_PONG, KEEPALIVE_PROGRAM, PROTOCOL_VERSION, REMOTE_PROGRAM,
};
use crate::protocol::procs::{self as p, Area};
use crate::protocol::types::RemoteError;
use crate::protocol::xdr::{Reader, Xdr};

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// The largest stream packet payload a client may send (`VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX`).
const STREAM_CHUNK_MAX: usize = 262_120;
/// Calls being executed, over all connections (for the drain at shutdown).
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
/// Memory that closed connections held (their largest output queue and buffers), not yet
/// given back to the system.
static FREED_SINCE_TRIM: AtomicU64 = AtomicU64::new(0);
/// Above this much, the heap is trimmed ([`crate::memory::trim`]).
const TRIM_AFTER: u64 = 4 * 1024 * 1024;
/// What one connection costs besides its output (buffers, tasks, state), roughly.
const CONN_COST: u64 = 12 * 1024;
/// How long a SIGTERM waits for calls in flight (a BMC power-on can take a minute).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Per-connection read buffer. Most messages are far smaller; a larger frame is read
/// straight into its own allocation. (64 KiB per direction would cost 640 MB at 5000 clients;
/// a flood of idle connections costs this much each.)
const READ_BUF: usize = 4 * 1024;
/// Per-connection write buffer (replies queued together go out in one write).
const WRITE_BUF: usize = 16 * 1024;

/// Serves every listener until `shutdown` resolves; then removes the socket files the daemon
/// created and lets calls in flight finish.
pub async fn serve(
    driver: Arc<Driver>,
    listeners: Vec<Listener>,
    tls: Option<Arc<Gate>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let cfg = driver.config();
    let slots = Slots {
        all: Arc::new(Semaphore::new(cfg.max_clients)),
        ro_only: Arc::new(Semaphore::new(cfg.max_readonly_clients)),
        anonymous: Arc::new(Semaphore::new(cfg.max_anonymous_clients)),
    };
    let mut paths = Vec::new();
    let mut tasks = Vec::new();
    for l in listeners {
        paths.extend(l.owned_path.clone());
        let d = driver.clone();
        let slots = slots.clone();
        match (l.socket, l.role) {
            (Socket::Unix(u), role) => {
                tasks.push(tokio::spawn(accept_unix(d, u, role == Role::Ro, slots)));
            }
            (Socket::Inet(t), Role::Tls) => match &tls {
                Some(g) => tasks.push(tokio::spawn(accept_net(d, t, Some(g.clone()), slots))),
                None => {
                    tracing::error!(listen = %l.place, "TLS listener without TLS settings; not served")
                }
            },
            (Socket::Inet(t), _) => tasks.push(tokio::spawn(accept_net(d, t, None, slots))),
        }
    }
    // Closed connections' memory goes back to the system, in batches.
    tasks.push(tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if FREED_SINCE_TRIM.load(Ordering::Relaxed) < TRIM_AFTER {
                continue;
            }
            let freed = FREED_SINCE_TRIM.swap(0, Ordering::Relaxed);
            let released = tokio::task::spawn_blocking(crate::memory::trim)
                .await
                .unwrap_or(false);
            tracing::debug!(freed, released, "heap trimmed after connections closed");
        }
    }));
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    // Stop accepting, then let calls in flight finish (their clients get their replies);
    // anything still running after the timeout is recovered from its journal at next start.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while IN_FLIGHT.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = IN_FLIGHT.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(calls = left, "stopping with calls still in flight");
    }
    // Give connection writers a moment to flush the last replies.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Connection slots, as libvirtd's limits: every client takes one of `all`; read-only ones
/// also one of `ro_only`; network clients one of `anonymous` until their certificate is
/// checked.
#[derive(Clone)]
struct Slots {
    all: Arc<Semaphore>,
    ro_only: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
}

/// Counts refused connections and logs them at most every 10 s (a flood must not flood the
/// log too).
#[derive(Default)]
struct Refusals {
    count: u64,
    last_log: Option<tokio::time::Instant>,
}

impl Refusals {
    fn refuse(&mut self, why: &str, peer: &Peer) {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.count,
                last_peer = %peer,
                "{why}; refusing connections"
            );
            self.last_log = Some(now);
            self.count = 0;
        }
    }
}

fn peer_of(stream: &UnixStream) -> Peer {
    match stream.peer_cred() {
        Ok(c) => Peer {
            uid: Some(c.uid()),
            pid: c.pid(),
            ..Peer::default()
        },
        Err(_) => Peer::default(),
    }
}

async fn accept_unix(driver: Arc<Driver>, l: UnixListener, ro: bool, slots: Slots) {
    let mut refusals = Refusals::default();
    loop {
        let (stream, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = peer_of(&stream);
        // The read-only cap first: a read-only flood is refused before it touches the
        // slots read-write clients need.
        let ro_permit = if ro {
            match slots.ro_only.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    refusals.refuse("too many read-only clients (max_readonly_clients)", &peer);
                    continue;
                }
            }
        } else {
            None
        };
        let Ok(permit) = slots.all.clone().try_acquire_owned() else {
            refusals.refuse("too many clients (max_clients)", &peer);
            continue;
        };
        let driver = driver.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            handle(driver, rd, wr, ro, peer).await;
            drop(permit);
            drop(ro_permit);
        });
    }
}

/// The TLS listener (with `gate`) or the plain TCP one.
async fn accept_net(driver: Arc<Driver>, l: TcpListener, gate: Option<Arc<Gate>>, slots: Slots) {
    let mut refusals = Refusals::default();
    let transport = if gate.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let (stream, addr) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut peer = Peer {
            transport,
            addr: Some(addr),
            ..Peer::default()
        };
        // Handshakes in progress have their own, small cap, so a flood of connections that
        // never finish one cannot hold the slots of real clients for long.
        let Ok(anonymous) = slots.anonymous.clone().try_acquire_owned() else {
            refusals.refuse(
                "too many unauthenticated clients (max_anonymous_clients)",
                &peer,
            );
            continue;
        };
        let Ok(permit) = slots.all.clone().try_acquire_owned() else {
            refusals.refuse("too many clients (max_clients)", &peer);
            continue;
        };
        let driver = driver.clone();
        let gate = gate.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let Some(gate) = gate else {
                drop(anonymous);
                let (rd, wr) = stream.into_split();
                handle(driver, rd, wr, false, peer).await;
                drop(permit);
                return;
            };
            let (tls, who) = match gate.admit(stream, addr).await {
                Ok(x) => x,
                Err(r) => {
                    tracing::warn!(
                        addr = %addr,
                        dn = r.dn.as_deref().unwrap_or("-"),
                        "TLS client refused: {}",
                        r.why
                    );
                    return;
                }
            };
            drop(anonymous);
            peer.dn = Some(who.dn.into());
            let ro_permit = if who.readonly {
                match slots.ro_only.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::warn!(peer = %peer, "too many read-only clients (max_readonly_clients); refusing");
                        return;
                    }
                }
            } else {
                None
            };
            let (rd, wr) = tokio::io::split(tls);
            handle(driver, rd, wr, who.readonly, peer).await;
            drop(permit);
            drop(ro_permit);
        });
    }
}

fn error_frame(h: &Header, e: &VirError) -> Vec<u8> {
    frame_with(&h.reply_to(Status::Error), &RemoteError::from(e))
}

/// libvirtd's server-side keepalive: once a client has said it supports keepalive
/// (CONNECT_SUPPORTS_FEATURE 10), a PING goes out whenever it has been silent for the interval;
/// after `keepalive_count` PINGs without any packet back, the connection is closed. A task of
/// its own, so the reader is never interrupted in the middle of a packet.
fn spawn_keepalive(client: &Arc<Client>, last_rx: Arc<AtomicU64>, started: tokio::time::Instant) {
    let cfg = client.driver.config();
    if cfg.keepalive_interval_ms == 0 {
        return;
    }
    let interval = Duration::from_millis(cfg.keepalive_interval_ms);
    let count = cfg.keepalive_count;
    let weak = Arc::downgrade(client);
    tokio::spawn(async move {
        let mut missed = 0u32;
        let mut last_ping = 0u64;
        loop {
            tokio::time::sleep(interval).await;
            let Some(c) = weak.upgrade() else { return };
            if !c.with(|s| s.keepalive) {
                continue;
            }
            let now = started.elapsed().as_millis() as u64;
            let rx = last_rx.load(Ordering::Relaxed);
            if rx >= last_ping {
                // Something arrived since our last PING: the client is alive.
                missed = 0;
            }
            if now.saturating_sub(rx) < interval.as_millis() as u64 {
                continue;
            }
            if missed >= count {
                tracing::warn!(
                    client = c.id,
                    "no answer to {count} keepalive PINGs; closing the connection"
                );
                c.close();
                return;
            }
            let ping = Header {
                prog: KEEPALIVE_PROGRAM,
                vers: PROTOCOL_VERSION,
                proc_: KEEPALIVE_PING,
                mtype: MessageType::Message as u32,
                serial: 0,
                status: 0,
            };
            c.send_event(frame(&ping, &[]));
            last_ping = now;
            missed += 1;
        }
    });
}

/// Writes `buf` with a time limit on progress: each write that takes no byte within
/// `limit` ends the connection. Returns false when the connection is finished.
async fn put<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    out: &Outbox,
    limit: Duration,
    id: u64,
) -> bool {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(limit, w.write(&buf[off..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => {
                off += n;
                out.written(n);
            }
            Err(_) => {
                tracing::warn!(
                    client = id,
                    pending = out.queued(),
                    "client took no output for {}s; disconnecting",
                    limit.as_secs_f64()
                );
                return false;
            }
        }
    }
    true
}

/// The writer of one connection: frames queued together go out in one write (up to
/// `WRITE_BUF`), big frames straight from their own buffer. Stops when the queue closes, a
/// write fails or the client stops taking bytes.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    out: Arc<Outbox>,
    limit: Duration,
    id: u64,
) {
    // Allocated on first use: an idle connection holds no write buffer.
    let mut batch: Vec<u8> = Vec::new();
    'outer: loop {
        // Until the connection closes; then what is still queued goes out (each write
        // within its time limit) and the writer ends.
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = out.closed() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        if rx.is_empty() && out.calls_in_flight() > 0 {
            // Other calls of this client are running (often on this worker, right behind
            // us): one turn of the scheduler lets their replies join this write, so a
            // pipelining client gets one segment (one TLS record) for several replies.
            tokio::task::yield_now().await;
        }
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if f.len() > WRITE_BUF / 2 {
                if !batch.is_empty() && !put(&mut w, &batch, &out, limit, id).await {
                    break 'outer;
                }
                batch.clear();
                if !put(&mut w, &f, &out, limit, id).await {
                    break 'outer;
                }
            } else {
                if batch.len() + f.len() > WRITE_BUF {
                    if !put(&mut w, &batch, &out, limit, id).await {
                        break 'outer;
                    }
                    batch.clear();
                }
                batch.extend_from_slice(&f);
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() && !put(&mut w, &batch, &out, limit, id).await {
            break;
        }
        batch.clear();
        match tokio::time::timeout(limit, w.flush()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    // Whatever is left is dropped with the queue; the reader learns the connection is over.
    out.close();
    rx.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Reads one packet body of `len` bytes. The buffer grows as bytes arrive, so a client that
/// announces a large packet and sends it slowly holds only what it really sent.
async fn read_body<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> Option<Vec<u8>> {
    const STEP: usize = 64 * 1024;
    let mut body = Vec::with_capacity(len.min(STEP));
    while body.len() < len {
        let want = (len - body.len()).min(STEP.max(body.len()));
        let got = (&mut *rd)
            .take(want as u64)
            .read_to_end(&mut body)
            .await
            .ok()?;
        if got == 0 {
            return None;
        }
    }
    Some(body)
}

/// Runs one connection to completion.
pub async fn handle<R, W>(driver: Arc<Driver>, rd: R, wr: W, ro: bool, peer: Peer)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let cfg = driver.config();
    let limit = cfg.max_client_requests;
    let write_limit = cfg.client_write_timeout();
    let (out, rx) = Outbox::new(cfg.max_client_output_bytes);
    let out = Arc::new(out);
    tracing::info!(client = id, ro, peer = %peer, "client connected");
    let client = Arc::new(Client::new(id, ro, peer, out.clone(), driver));

    let writer = tokio::spawn(write_loop(wr, rx, out.clone(), write_limit, id));

    let permits = Arc::new(Semaphore::new(limit));
    let last_rx = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    spawn_keepalive(&client, last_rx.clone(), started);
    let mut rd = BufReader::with_capacity(READ_BUF, rd);
    loop {
        // A client that does not read its replies gets no more calls taken from it.
        if !out.wait_room().await {
            break;
        }
        let mut lenb = [0u8; 4];
        let r = tokio::select! {
            r = rd.read_exact(&mut lenb) => r,
            _ = out.closed() => break,
        };
        if r.is_err() {
            break;
        }
        let body_len = match check_length(u32::from_be_bytes(lenb)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(client = id, "{e}; closing connection");
                break;
            }
        };
        let body = tokio::select! {
            b = read_body(&mut rd, body_len) => b,
            _ = out.closed() => break,
        };
        let Some(body) = body else {
            tracing::debug!(client = id, "truncated packet; closing connection");
            break;
        };
        // Any packet counts as a sign of life.
        last_rx.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut r = Reader::new(&body[..HEADER_LEN]);
        let Ok(h) = Header::decode(&mut r) else { break };
        match (h.prog, MessageType::from_u32(h.mtype)) {
            (KEEPALIVE_PROGRAM, _) => {
                if h.proc_ == KEEPALIVE_PING {
                    let pong = Header {
                        proc_: KEEPALIVE_PONG,
                        ..h
                    };
                    client.send(frame(&pong, &[]));
                }
            }
            (REMOTE_PROGRAM, Some(MessageType::Call)) if h.vers == PROTOCOL_VERSION => {
                if h.status != Status::Ok as u32 {
                    client.send(error_frame(
                        &h,
                        &VirError::rpc(&format!("Unexpected message status {}", h.status)),
                    ));
                    continue;
                }
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = out.closed() => break,
                };
                let c = client.clone();
                IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
                out.begin_call();
                tokio::spawn(async move {
                    let payload = &body[HEADER_LEN..];
                    // A bug in one handler must not leave its client waiting forever.
                    let call = std::panic::AssertUnwindSafe(dispatch::call(
                        &c, h.proc_, h.serial, payload,
                    ));
                    let f = match futures::FutureExt::catch_unwind(call).await {
                        Ok(Ok(ret)) => frame(&h.reply_to(Status::Ok), &ret),
                        Ok(Err(e)) => error_frame(&h, &e),
                        Err(_) => {
                            tracing::error!(proc = h.proc_, "call handler panicked");
                            error_frame(
                                &h,
                                &VirError::internal(&format!(
                                    "metalvirtd failed while handling procedure {}",
                                    h.proc_
                                )),
                            )
                        }
                    };
                    let len = f.len();
                    c.send(f);
                    // A stream the call opened starts once its reply is queued (only the
                    // stream-opening procedures look: no cost to the others).
                    if p::info(h.proc_).is_some_and(|i| i.area == Area::Streams) {
                        if let Some(task) = c.with(|s| s.pending_streams.remove(&h.serial)) {
                            tokio::spawn(task.0);
                        }
                    }
                    c.out.end_call(len);
                    drop(permit);
                    IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
                });
            }
            (REMOTE_PROGRAM, Some(MessageType::Stream)) => {
                // A packet of an open stream goes to its task (the reader waits while the
                // task is busy); stray stream packets are ignored, as libvirtd does.
                let tx = client.with(|s| s.streams.get(&h.serial).cloned());
                if let Some(tx) = tx {
                    // libvirt's client sends stream data in chunks of at most
                    // VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX; bigger is not a client of ours.
                    if body.len() - HEADER_LEN > STREAM_CHUNK_MAX {
                        tracing::warn!(client = id, "oversized stream packet; closing connection");
                        break;
                    }
                    let msg = match h.status {
                        s if s == Status::Continue as u32 => {
                            StreamIn::Data(body[HEADER_LEN..].to_vec())
                        }
                        s if s == Status::Ok as u32 => StreamIn::Finish,
                        _ => StreamIn::Abort,
                    };
                    tokio::select! {
                        _ = tx.send(msg) => {}
                        _ = out.closed() => break,
                    }
                }
            }
            (REMOTE_PROGRAM, Some(MessageType::CallWithFds)) => {
                client.send(error_frame(
                    &h,
                    &VirError::rpc("Passing file descriptors is not supported"),
                ));
            }
            (_, Some(MessageType::Call)) => {
                client.send(error_frame(
                    &h,
                    &VirError::rpc(&format!(
                        "Cannot find program {} version {}",
                        h.prog, h.vers
                    )),
                ));
            }
            _ => {
                tracing::debug!(
                    client = id,
                    prog = h.prog,
                    mtype = h.mtype,
                    "ignoring unexpected message"
                );
            }
        }
    }
    // Let in-flight calls finish (a BMC call is not abandoned half-way), then stop the
    // writer: it flushes what is queued unless the client has stopped taking bytes.
    let _ = permits.acquire_many(limit as u32).await;
    // Every reply is queued: the writer flushes them and ends.
    out.close();
    let doomed = client.with(|s| {
        s.callbacks.clear();
        // Ends every stream (its task sees its inbox close) and its console session.
        s.streams.clear();
        s.pending_streams.clear();
        std::mem::take(&mut s.autodestroy)
    });
    for (uuid, id) in doomed {
        let d = client.driver.clone();
        tokio::spawn(async move { d.autodestroy(uuid, id).await });
    }
    let peer = client.peer.clone();
    drop(client);
    let _ = writer.await;
    FREED_SINCE_TRIM.fetch_add(out.peak() as u64 + CONN_COST, Ordering::Relaxed);
    tracing::info!(client = id, peer = %peer, "client disconnected");
}
