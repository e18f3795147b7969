//! A libvirt remote-protocol client for the load tools (`metalvirt-bench`, `metalvirt-soak`):
//! many calls in flight on one connection, matched by serial. Not used by the daemon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::protocol::header::{frame_with, Header, REMOTE_PROGRAM};
use crate::protocol::procs as p;
use crate::protocol::types::{ConnectOpenArgs, RemoteError};
use crate::protocol::xdr::{from_bytes, Xdr, XdrError};

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<(u32, Vec<u8>)>>>>;

/// One connection with pipelined calls matched by serial.
pub struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    serial: AtomicU64,
}

/// A failed call: the daemon's error (code and message) or a broken connection (code 0).
#[derive(Debug, Clone)]
pub struct CallError {
    /// `virErrorNumber`, 0 when the connection failed.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl CallError {
    fn closed() -> Self {
        CallError {
            code: 0,
            message: "connection closed".into(),
        }
    }

    /// A reply that does not decode.
    pub fn decode(e: XdrError) -> Self {
        CallError {
            code: 0,
            message: format!("undecodable reply: {e}"),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl Conn {
    /// Connects and opens `name` (AUTH_LIST, CONNECT_OPEN); panics when the daemon is not there.
    pub async fn open(path: &str, name: &str) -> Arc<Conn> {
        let s = UnixStream::connect(path).await.expect("connect");
        Conn::open_on(s, name).await
    }

    /// Opens `name` on a connected stream (unix, TCP or TLS).
    pub async fn open_on<S>(s: S, name: &str) -> Arc<Conn>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(s);
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(async move {
            // Calls queued together go out in one write (one TLS record, one syscall), so
            // the client costs little beside the daemon it measures.
            let mut batch = Vec::with_capacity(64 * 1024);
            while let Some(f) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&f);
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(f) => batch.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        });
        let pend = pending.clone();
        tokio::spawn(async move {
            loop {
                let mut l = [0u8; 4];
                if rd.read_exact(&mut l).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes(l) as usize - 4;
                let mut b = vec![0u8; n];
                if rd.read_exact(&mut b).await.is_err() {
                    return;
                }
                let w = |i: usize| u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
                let (ty, serial, status) = (w(3), w(4), w(5));
                if w(0) == 0x6b65_6570 && w(2) == 1 {
                    continue; // server PINGs are not answered: runs are short
                }
                if ty != 1 {
                    continue;
                }
                if let Some(tx) = pend.lock().await.remove(&serial) {
                    let _ = tx.send((status, b[24..].to_vec()));
                }
            }
        });
        let c = Arc::new(Conn {
            tx,
            pending,
            serial: AtomicU64::new(0),
        });
        c.call(p::AUTH_LIST, &()).await.expect("auth list");
        c.call(
            p::CONNECT_OPEN,
            &ConnectOpenArgs {
                name: Some(name.to_string()),
                flags: 0,
            },
        )
        .await
        .expect("open");
        c
    }

    /// One call; waits for its reply.
    pub async fn call<T: Xdr>(&self, proc_: i32, args: &T) -> Result<Vec<u8>, CallError> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) as u32;
        let h = Header {
            prog: REMOTE_PROGRAM,
            vers: 1,
            proc_,
            mtype: 0,
            serial,
            status: 0,
        };
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(serial, tx);
        self.tx
            .send(frame_with(&h, args))
            .await
            .map_err(|_| CallError::closed())?;
        let (status, payload) = rx.await.map_err(|_| CallError::closed())?;
        if status != 0 {
            let e: RemoteError = from_bytes(&payload).map_err(CallError::decode)?;
            return Err(CallError {
                code: e.code,
                message: e.message.unwrap_or_default(),
            });
        }
        Ok(payload)
    }
}

/// A TLS client as libvirt's: the certificates of a libvirt pkipath (`cacert.pem`,
/// `clientcert.pem`, `clientkey.pem` in `pki`).
pub fn tls_client(pki: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    let read = |f: &str| std::fs::read(pki.join(f)).map_err(|e| format!("{f}: {e}"));
    let cfg = crate::backend::ovs::ovsdb::tls_config(
        &read("cacert.pem")?,
        &read("clientcert.pem")?,
        &read("clientkey.pem")?,
    )?;
    Ok(tokio_rustls::TlsConnector::from(cfg))
}

/// Connects over TLS as libvirt's client does: the handshake, then the server's
/// confirmation byte (1 = admitted).
pub async fn tls_connect(
    tls: &tokio_rustls::TlsConnector,
    addr: &str,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let mut s = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .await
        .map_err(|e| format!("{addr}: no confirmation byte: {e}"))?;
    if b[0] != 1 {
        return Err(format!("{addr}: server verification failed"));
    }
    Ok(s)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}
