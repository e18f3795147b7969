//! An OVSDB client (RFC 7047 JSON-RPC) over unix and tcp sockets: the transport for NIC
//! plumbing on a DPU's Open vSwitch.
//!
//! Messages are JSON objects back to back with no framing; the reader task splits them with
//! serde_json's streaming deserializer, answers the server's `echo` keepalives itself and
//! hands replies to their callers by `id` (replies may come in any order). Every call has a
//! time limit. `monitor` results and later `update` notifications both go, in the order the
//! server sent them, to one callback run by the reader, so a replica built from them never
//! applies an old initial state over a newer update. When the connection drops, calls in
//! flight fail at once with [`OvsdbError::Disconnected`]; reconnecting is the caller's
//! decision ([`super::Session`] does it with backoff).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::jsonstream;

/// What can go wrong talking to OVSDB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvsdbError {
    /// The connection could not be made.
    #[error("cannot connect to OVSDB at {addr}: {reason}")]
    Connect {
        /// Address as configured.
        addr: String,
        /// The system's reason.
        reason: String,
    },
    /// The connection is gone.
    #[error("OVSDB connection closed")]
    Disconnected,
    /// No reply within the time limit.
    #[error("OVSDB {method} got no reply within {limit:?}")]
    Timeout {
        /// The method called.
        method: String,
        /// The limit.
        limit: Duration,
    },
    /// The server answered the call with an error (RFC 7047 `error`).
    #[error("OVSDB error: {error}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Server {
        /// The error string (e.g. `unknown database`).
        error: String,
        /// Its details.
        details: String,
    },
    /// One operation of a transaction failed (RFC 7047 §5.2); nothing was committed.
    #[error("OVSDB operation {index} failed: {error}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Operation {
        /// Position of the failed operation in the transaction.
        index: usize,
        /// The error string (e.g. `constraint violation`, `timed out` for a `wait`).
        error: String,
        /// Its details.
        details: String,
    },
    /// A reply that does not follow the protocol.
    #[error("OVSDB protocol error: {0}")]
    Protocol(String),
}

type Reply = Result<Value, OvsdbError>;

/// The TLS set-up of an `ssl:` connection, as ovs-vsctl's `--private-key`, `--certificate`
/// and `--ca-cert`: the server's certificate must chain to `ca_pem` and name the host it is
/// reached at; the client proves itself with `cert_pem`/`key_pem` (ovsdb-server's `pssl:`
/// asks for a client certificate signed by its CA).
pub fn tls_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(cfg))
}

/// Receives monitor contents: the monitor's id and a `<table-updates>` object (RFC 7047
/// §4.1.6). Runs on the reader task: it must not block.
pub type UpdateFn = Arc<dyn Fn(&Value, &Value) + Send + Sync>;

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Request ids of monitors in flight, with the monitor id each was given.
    monitors: Mutex<HashMap<u64, Value>>,
    on_update: Option<UpdateFn>,
    closed: watch::Sender<bool>,
}

/// One connection to an ovsdb-server.
pub struct Ovsdb {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for Ovsdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ovsdb")
    }
}

fn server_error(v: &Value) -> Option<OvsdbError> {
    let e = v.get("error")?;
    if e.is_null() {
        return None;
    }
    Some(OvsdbError::Server {
        error: e
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
        details: v
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

impl Ovsdb {
    /// Connects to `unix:/path` or `tcp:host:port` (ovs-vsctl's `--db` syntax).
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Ovsdb, OvsdbError> {
        Self::connect_with(addr, timeout, None, None).await
    }

    /// Like [`Ovsdb::connect`], handing monitor contents to `on_update`; `ssl:host:port`
    /// needs `tls` (see [`tls_config`]).
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        on_update: Option<UpdateFn>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Ovsdb, OvsdbError> {
        let fail = |reason: String| OvsdbError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let connect = async {
            if let Some(path) = addr.strip_prefix("unix:") {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let (r, w) = s.into_split();
                Ok(Self::start(r, w, timeout, on_update.clone()))
            } else if let Some(hp) = addr.strip_prefix("tcp:") {
                let s = tokio::net::TcpStream::connect(hp)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                s.set_nodelay(true).ok();
                let (r, w) = s.into_split();
                Ok(Self::start(r, w, timeout, on_update.clone()))
            } else if let Some(hp) = addr.strip_prefix("ssl:") {
                let tls =
                    tls.ok_or_else(|| fail("ssl: needs a key, a certificate and a CA".into()))?;
                let (host, _) = hp
                    .rsplit_once(':')
                    .ok_or_else(|| fail("ssl: address without a port".into()))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| fail(format!("'{host}': {e}")))?;
                let s = tokio::net::TcpStream::connect(hp)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                s.set_nodelay(true).ok();
                let s = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, s)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                let (r, w) = tokio::io::split(s);
                Ok(Self::start(r, w, timeout, on_update.clone()))
            } else {
                Err(fail(
                    "the address must start with unix:, tcp: or ssl:".into(),
                ))
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| fail(format!("no connection within {timeout:?}")))?
    }

    pub(crate) fn start<R, W>(r: R, w: W, timeout: Duration, on_update: Option<UpdateFn>) -> Ovsdb
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            monitors: Mutex::new(HashMap::new()),
            on_update,
            closed: watch::Sender::new(false),
        });
        let (out, rx) = mpsc::unbounded_channel();
        tokio::spawn(jsonstream::write_loop(w, rx));
        // The reader answers echo requests through a weak sender: once this handle is
        // dropped the writer ends and shuts the connection, which ends the reader too.
        tokio::spawn(Self::read_loop(r, shared.clone(), out.downgrade()));
        Ovsdb {
            shared,
            out,
            next_id: AtomicU64::new(1),
            timeout,
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        r: R,
        shared: Arc<Shared>,
        out: mpsc::WeakUnboundedSender<Vec<u8>>,
    ) {
        let end = jsonstream::read_values(r, |v| Self::dispatch(v, &shared, &out)).await;
        if end == jsonstream::End::Malformed {
            tracing::warn!("OVSDB sent malformed JSON; closing the connection");
        }
        shared.closed.send_replace(true);
        let pending: Vec<_> = shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(OvsdbError::Disconnected));
        }
    }

    fn dispatch(v: Value, shared: &Shared, out: &mpsc::WeakUnboundedSender<Vec<u8>>) {
        match v.get("method").and_then(Value::as_str) {
            // Keepalive: answer with the params, as RFC 7047 §4.1.11 asks.
            Some("echo") => {
                let reply = json!({"id": v["id"], "result": v["params"], "error": null});
                if let Some(out) = out.upgrade() {
                    let _ = out.send(reply.to_string().into_bytes());
                }
            }
            Some("update") => {
                if let (Some(f), Some(p)) = (&shared.on_update, v["params"].as_array()) {
                    if let [mon, updates] = p.as_slice() {
                        f(mon, updates);
                    }
                }
            }
            Some(other) => tracing::debug!(method = other, "OVSDB notification ignored"),
            None => {
                let Some(id) = v.get("id").and_then(Value::as_u64) else {
                    return;
                };
                let monitor = shared
                    .monitors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let (Some(mon), Some(f), None) = (&monitor, &shared.on_update, server_error(&v))
                {
                    f(mon, &v["result"]);
                }
                let tx = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let r = match server_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = tx.send(r);
                }
            }
        }
    }

    /// Whether the connection has dropped.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Returns when the connection has dropped.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// One JSON-RPC call.
    pub async fn call(&self, method: &str, params: Value) -> Reply {
        self.call_inner(method, params, None).await
    }

    async fn call_inner(&self, method: &str, params: Value, monitor: Option<Value>) -> Reply {
        if self.is_closed() {
            return Err(OvsdbError::Disconnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(mon) = monitor {
            self.shared
                .monitors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, mon);
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let msg = json!({"id": id, "method": method, "params": params});
        if self.out.send(msg.to_string().into_bytes()).is_err() {
            self.forget(id);
            return Err(OvsdbError::Disconnected);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(OvsdbError::Disconnected),
            Err(_) => {
                self.forget(id);
                Err(OvsdbError::Timeout {
                    method: method.to_string(),
                    limit: self.timeout,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.shared
            .monitors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Starts monitor `id` on `db` (RFC 7047 §4.1.5) with `requests` (table → monitor
    /// request). The initial contents and every later change go to the connection's update
    /// callback, in order.
    pub async fn monitor(&self, db: &str, id: Value, requests: Value) -> Result<(), OvsdbError> {
        self.call_inner("monitor", json!([db, id.clone(), requests]), Some(id))
            .await
            .map(|_| ())
    }

    /// The databases the server holds.
    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let v = self.call("list_dbs", json!([])).await?;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| OvsdbError::Protocol(format!("list_dbs answered {v}")))
    }

    /// A transaction: `ops` on database `db`. Returns one result per operation; the first
    /// failed operation (RFC 7047 §5.2: an object with `error`) makes the call fail, and the
    /// server has then committed nothing.
    pub async fn transact(&self, db: &str, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(db)];
        let n = ops.len();
        params.extend(ops);
        let v = self.call("transact", Value::Array(params)).await?;
        let results = v
            .as_array()
            .cloned()
            .ok_or_else(|| OvsdbError::Protocol(format!("transact answered {v}")))?;
        for (index, r) in results.iter().enumerate() {
            if let Some(OvsdbError::Server { error, details }) = server_error(r) {
                return Err(OvsdbError::Operation {
                    index,
                    error,
                    details,
                });
            }
        }
        if results.len() < n {
            return Err(OvsdbError::Protocol(format!(
                "transact answered {} results for {n} operations",
                results.len()
            )));
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    //! Against a real ovsdb-server on a private database (Open vSwitch's own schema).

    use super::super::testing::{make_pki, Server};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn port_ops(name: &str, iface_id: &str) -> Vec<Value> {
        vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": name, "type": "internal",
                           "external_ids": ["map", [["iface-id", iface_id]]]}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": name, "interfaces": ["named-uuid", "iface"]}}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", "br-int"]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
        ]
    }

    #[tokio::test]
    async fn dropping_the_handle_closes_the_connection() {
        // (Found by fuzzing: the reader's own sender kept the writer, and so the
        // connection and both tasks, alive for ever after the handle was dropped.)
        let (client, mut server) = tokio::io::duplex(4096);
        let (r, w) = tokio::io::split(client);
        let db = Ovsdb::start(r, w, Duration::from_secs(5), None);
        drop(db);
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the connection is shut when the handle goes")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn messages_split_across_reads_and_echo_answered() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (r, w) = tokio::io::split(client);
        let db = Ovsdb::start(r, w, Duration::from_secs(5), None);
        let call = tokio::spawn(async move { db.list_dbs().await });
        let mut buf = vec![0u8; 4096];
        let n = server.read(&mut buf).await.unwrap();
        let req: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(req["method"], "list_dbs");
        let id = req["id"].as_u64().unwrap();
        // The server's keepalive arrives first; the reply comes in two pieces.
        server
            .write_all(br#"{"id":"echo","method":"echo","params":["k"]}{"id":"#)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server
            .write_all(format!(r#"{id},"result":["Open_vSwitch"],"error":null}}"#).as_bytes())
            .await
            .unwrap();
        assert_eq!(call.await.unwrap().unwrap(), ["Open_vSwitch"]);
        let n = server.read(&mut buf).await.unwrap();
        let echo: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(echo, json!({"id": "echo", "result": ["k"], "error": null}));
    }

    #[tokio::test]
    async fn ssl_with_client_certificates_against_ovsdb_server() {
        let srv = Server::start_ssl();
        let read = |n: &str| std::fs::read(srv.path(n)).unwrap();
        // (CA we trust, our certificate's PKI)
        let tls = |ca: &str, pki: &str| {
            let (cert, key) = (format!("{pki}-client.pem"), format!("{pki}-client.key"));
            tls_config(&read(ca), &read(&cert), &read(&key)).unwrap()
        };
        let t = Duration::from_secs(5);
        let good = tls("ovs-ca.pem", "ovs");
        let db = Ovsdb::connect_with(&srv.ssl_addr(), t, None, Some(&good))
            .await
            .unwrap();
        assert!(db
            .list_dbs()
            .await
            .unwrap()
            .contains(&"Open_vSwitch".to_string()));
        // Without a client certificate of its CA, ovsdb-server hangs up.
        make_pki(srv.dir.path(), "rogue");
        let rogue = tls("ovs-ca.pem", "rogue");
        let refused = async {
            let db = Ovsdb::connect_with(&srv.ssl_addr(), t, None, Some(&rogue)).await?;
            db.list_dbs().await
        };
        assert!(refused.await.is_err(), "a client of another CA is refused");
        // A server whose certificate does not chain to our CA is refused by us.
        let wrong_ca = tls("rogue-ca.pem", "ovs");
        let e = Ovsdb::connect_with(&srv.ssl_addr(), t, None, Some(&wrong_ca))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        // Nor is the certificate good for another name than the one it carries.
        let by_name = srv.ssl_addr().replace("127.0.0.1", "localhost");
        let e = Ovsdb::connect_with(&by_name, t, None, Some(&good))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        // ssl: without TLS settings is a configuration error, not a plain connection.
        assert!(Ovsdb::connect(&srv.ssl_addr(), t).await.is_err());
    }

    #[tokio::test]
    async fn transact_select_errors_and_disconnect() {
        let mut srv = Server::start();
        let db = Ovsdb::connect(&srv.addr(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(db
            .list_dbs()
            .await
            .unwrap()
            .contains(&"Open_vSwitch".to_string()));
        // Root row and bridge, as `ovs-vsctl init; add-br br-int` make them.
        db.transact(
            "Open_vSwitch",
            vec![
                json!({"op": "insert", "table": "Bridge", "uuid-name": "br",
                       "row": {"name": "br-int", "datapath_type": "netdev"}}),
                json!({"op": "insert", "table": "Open_vSwitch",
                       "row": {"bridges": ["named-uuid", "br"]}}),
            ],
        )
        .await
        .unwrap();
        // Concurrent transactions: replies matched by id.
        let (a, b) = tokio::join!(
            db.transact("Open_vSwitch", port_ops("pf0vf0", "port-a")),
            db.transact("Open_vSwitch", port_ops("pf0vf1", "port-b")),
        );
        assert_eq!(a.unwrap().len(), 3);
        assert_eq!(b.unwrap().len(), 3);
        let rows = db
            .transact(
                "Open_vSwitch",
                vec![json!({"op": "select", "table": "Interface", "where": [],
                            "columns": ["name", "external_ids"]})],
            )
            .await
            .unwrap();
        let mut names: Vec<String> = rows[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["pf0vf0", "pf0vf1"]);
        // A failing operation fails the call with the server's error; nothing is committed.
        let e = db
            .transact("Open_vSwitch", port_ops("pf0vf0", "dup"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OvsdbError::Operation { error, .. } if error == "constraint violation"),
            "{e:?}"
        );
        let e = db.transact("No_Such_Db", vec![]).await.unwrap_err();
        assert!(matches!(e, OvsdbError::Server { .. }), "{e:?}");
        // The server goes away: calls fail at once, not after the time limit.
        srv.stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(db.is_closed());
        let t = std::time::Instant::now();
        assert_eq!(db.list_dbs().await.unwrap_err(), OvsdbError::Disconnected);
        assert!(t.elapsed() < Duration::from_secs(1));
        let e = Ovsdb::connect(&srv.addr(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, OvsdbError::Connect { .. }), "{e:?}");
    }
}
