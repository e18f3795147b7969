//! SPDK's JSON-RPC 2.0 over its unix socket (`spdk_tgt -r /var/tmp/spdk.sock`).
//!
//! Requests are bare JSON objects with no delimiter; the target answers each by `id` and
//! not necessarily in order (a slow `bdev_nvme_attach_controller` is answered after a later
//! `spdk_get_version`), so any number of calls share one connection and each waits for its
//! own reply. Every call has a time limit. A dropped connection fails the calls in flight at
//! once; the next call connects again. SPDK's error objects become [`RpcError::Rpc`], which
//! names the method, the code and SPDK's message.
//!
//! SPDK refuses parameter keys it does not know (`-32603 spdk_json_decode_object failed`),
//! so callers build params with only the keys that method has had since long ago, and
//! optional keys only when they differ from the default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::backend::jsonstream;

/// JSON-RPC and errno codes SPDK answers with.
pub mod code {
    /// `-ENODEV` "No such device".
    pub const ENODEV: i64 = -19;
    /// `-EEXIST` "File exists".
    pub const EEXIST: i64 = -17;
    /// `-EALREADY` (a controller with that name and path exists).
    pub const EALREADY: i64 = -114;
    /// Invalid params (SPDK also uses it with errno texts).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error (also SPDK's "spdk_json_decode_object failed").
    pub const INTERNAL: i64 = -32603;
}

/// What can go wrong calling SPDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The socket could not be reached.
    #[error("cannot connect to SPDK at {path}: {reason}")]
    Connect {
        /// Socket path.
        path: String,
        /// The system's reason.
        reason: String,
    },
    /// The connection dropped before the reply came.
    #[error("SPDK connection lost during {method}")]
    Disconnected {
        /// The method called.
        method: String,
    },
    /// No reply within the time limit.
    #[error("SPDK {method} got no reply within {limit:?}")]
    Timeout {
        /// The method called.
        method: String,
        /// The limit.
        limit: Duration,
    },
    /// SPDK answered with an error object.
    #[error("SPDK {method} failed: {message} (code {code})")]
    Rpc {
        /// The method called.
        method: String,
        /// SPDK's code (negative errno or JSON-RPC code).
        code: i64,
        /// SPDK's message.
        message: String,
    },
    /// A reply that does not have the shape the method documents.
    #[error("SPDK {method} answered unexpectedly: {detail}")]
    Protocol {
        /// The method called.
        method: String,
        /// What was wrong.
        detail: String,
    },
}

impl RpcError {
    /// SPDK's error code, for an error object.
    pub fn code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether SPDK answered with `code` (and, when given, a message containing `text`).
    pub fn is(&self, c: i64, text: Option<&str>) -> bool {
        match self {
            RpcError::Rpc { code, message, .. } => {
                *code == c && text.is_none_or(|t| message.contains(t))
            }
            _ => false,
        }
    }

    /// SPDK's "No such device" (`-19`, or `-32602` with that text, depending on the method).
    pub fn is_no_device(&self) -> bool {
        self.is(code::ENODEV, None) || self.is(code::INVALID_PARAMS, Some("No such device"))
    }
}

type Reply = Result<Value, (i64, String)>;
type BoxRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
/// Makes the stream of a new connection (instead of the unix socket).
pub type Connector = Arc<dyn Fn() -> tokio::io::DuplexStream + Send + Sync>;

/// What the reader task shares with the callers. The reader holds no sender of the write
/// channel: when the client is dropped the writer ends, the socket's write side shuts and the
/// target closes the connection, which ends the reader.
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    closed: AtomicBool,
}

struct Conn {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
}

impl Shared {
    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    fn dispatch(&self, v: Value) {
        // A batch reply never comes (we do not send batches); a reply without a numeric id
        // (SPDK's `-32600 Invalid request` has `id: null`) matches no call.
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            tracing::warn!("SPDK sent a message that answers no call: {v}");
            return;
        };
        let Some(tx) = self.take(id) else { return };
        let reply = match v.get("error") {
            Some(e) if !e.is_null() => Err((
                e.get("code").and_then(Value::as_i64).unwrap_or(0),
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )),
            _ => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        };
        let _ = tx.send(reply);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let pending: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        drop(pending); // the callers see their sender dropped: Disconnected
    }
}

/// A client of one SPDK target. Cheap to share; calls run concurrently on one connection.
pub struct Spdk {
    path: PathBuf,
    /// An in-memory transport instead of the socket (fuzzing).
    connector: Option<Connector>,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    connections: AtomicU64,
}

impl std::fmt::Debug for Spdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spdk({})", self.path.display())
    }
}

impl Spdk {
    /// A client of the target at `path`; connects on the first call. `timeout` is the
    /// default time limit of a call (and of connecting).
    pub fn new(path: impl AsRef<Path>, timeout: Duration) -> Self {
        Spdk {
            path: path.as_ref().to_path_buf(),
            connector: None,
            timeout,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
        }
    }

    /// A client whose every connection is a fresh stream from `connect` (in-memory peers
    /// for fuzzing).
    #[doc(hidden)]
    pub fn with_connector(connect: Connector, timeout: Duration) -> Self {
        Spdk {
            connector: Some(connect),
            ..Self::new("in-memory", timeout)
        }
    }

    /// How many connections were made so far. A change means the target may have restarted
    /// (SPDK keeps no state across restarts): what a caller cached about it is stale.
    pub fn generation(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    async fn connection(&self) -> Result<Arc<Conn>, RpcError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot
            .as_ref()
            .filter(|c| !c.shared.closed.load(Ordering::SeqCst))
        {
            return Ok(c.clone());
        }
        let fail = |reason: String| RpcError::Connect {
            path: self.path.display().to_string(),
            reason,
        };
        let (r, w): (BoxRead, BoxWrite) = match &self.connector {
            Some(connect) => {
                let (r, w) = tokio::io::split(connect());
                (Box::new(r), Box::new(w))
            }
            None => {
                let stream =
                    tokio::time::timeout(self.timeout, tokio::net::UnixStream::connect(&self.path))
                        .await
                        .map_err(|_| fail(format!("no connection within {:?}", self.timeout)))?
                        .map_err(|e| fail(e.to_string()))?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let (out, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let conn = Arc::new(Conn {
            shared: shared.clone(),
            out,
        });
        tokio::spawn(jsonstream::write_loop(w, rx));
        let reader = shared;
        tokio::spawn(async move {
            let end = jsonstream::read_values(r, |v| reader.dispatch(v)).await;
            if end == jsonstream::End::Malformed {
                tracing::warn!("SPDK sent malformed JSON; closing the connection");
            }
            reader.close();
        });
        self.connections.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(path = %self.path.display(), "connected to SPDK");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Calls `method` with the default time limit.
    pub async fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        self.call_within(method, params, self.timeout).await
    }

    /// Calls `method`, waiting at most `limit` for the reply.
    pub async fn call_within(
        &self,
        method: &str,
        params: Option<Value>,
        limit: Duration,
    ) -> Result<Value, RpcError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            msg["params"] = p;
        }
        let (tx, rx) = oneshot::channel();
        conn.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let lost = || RpcError::Disconnected {
            method: method.to_string(),
        };
        if conn.shared.closed.load(Ordering::SeqCst)
            || conn.out.send(msg.to_string().into_bytes()).is_err()
        {
            conn.shared.take(id);
            return Err(lost());
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((code, message)))) => Err(RpcError::Rpc {
                method: method.to_string(),
                code,
                message,
            }),
            Ok(Err(_)) => Err(lost()),
            Err(_) => {
                conn.shared.take(id);
                Err(RpcError::Timeout {
                    method: method.to_string(),
                    limit,
                })
            }
        }
    }

    /// `spdk_get_version`: the target's version string, e.g. `SPDK v26.05`.
    pub async fn version(&self) -> Result<String, RpcError> {
        let v = self.call("spdk_get_version", None).await?;
        v.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RpcError::Protocol {
                method: "spdk_get_version".into(),
                detail: format!("no version in {v}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    /// A scripted server: reads requests and answers them through `answer`, which sees
    /// every request received so far and returns the bytes to write.
    fn serve(
        path: &Path,
        mut answer: impl FnMut(&[Value]) -> Option<Vec<u8>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<Value>> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                jsonstream::read_values(r, |v| {
                    let _ = tx.send(v);
                })
                .await;
            });
            let mut seen = Vec::new();
            while let Some(v) = rx.recv().await {
                seen.push(v);
                if let Some(bytes) = answer(&seen) {
                    if bytes.is_empty() {
                        break;
                    }
                    w.write_all(&bytes).await.unwrap();
                }
            }
            seen
        })
    }

    #[tokio::test]
    async fn pipelined_calls_are_matched_by_id_when_answered_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spdk.sock");
        let server = serve(&path, |seen| {
            if seen.len() < 2 {
                return None;
            }
            // Answer the second request first, both in one write, no delimiter.
            let id = |i: usize| seen[i]["id"].clone();
            Some(
                format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{{"version":"SPDK v26.05"}}}}{{"jsonrpc":"2.0","id":{},"result":["mv-xn1"]}}"#,
                    id(1),
                    id(0)
                )
                .into_bytes(),
            )
        });
        let spdk = Spdk::new(&path, Duration::from_secs(5));
        let attach = spdk.call("bdev_nvme_attach_controller", Some(json!({"name": "mv-x"})));
        let version = spdk.version();
        let (a, v) = tokio::join!(attach, version);
        assert_eq!(a.unwrap(), json!(["mv-xn1"]));
        assert_eq!(v.unwrap(), "SPDK v26.05");
        drop(spdk);
        let seen = server.await.unwrap();
        assert_eq!(seen[0]["jsonrpc"], "2.0");
        assert_eq!(seen[0]["params"], json!({"name": "mv-x"}));
        assert!(
            seen[1].get("params").is_none(),
            "no params key for a no-param method"
        );
    }

    #[tokio::test]
    async fn errors_name_method_code_and_message_and_timeouts_and_drops_fail_fast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spdk.sock");
        let server = serve(&path, |seen| {
            let last = seen.last().unwrap();
            match last["method"].as_str().unwrap() {
                "bdev_get_bdevs" => Some(
                    format!(
                        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-19,"message":"No such device"}}}}"#,
                        last["id"]
                    )
                    .into_bytes(),
                ),
                "slow" => None,
                _ => Some(Vec::new()), // close the connection
            }
        });
        let spdk = Spdk::new(&path, Duration::from_secs(5));
        let e = spdk
            .call("bdev_get_bdevs", Some(json!({"name": "nope"})))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "SPDK bdev_get_bdevs failed: No such device (code -19)"
        );
        assert!(e.is_no_device());
        let e = spdk
            .call_within("slow", None, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::Timeout { .. }), "{e}");
        let e = spdk.call("bye", None).await.unwrap_err();
        assert_eq!(
            e,
            RpcError::Disconnected {
                method: "bye".into()
            }
        );
        server.await.unwrap();
        // Nobody listens any more: a clear connect error, not a hang.
        std::fs::remove_file(&path).unwrap();
        let e = spdk.version().await.unwrap_err();
        assert!(matches!(e, RpcError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn reconnects_after_the_target_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spdk.sock");
        let answer = |seen: &[Value]| {
            let last = seen.last().unwrap();
            if last["method"] == "quit" {
                return Some(Vec::new());
            }
            Some(
                format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{{"version":"SPDK v26.05"}}}}"#,
                    last["id"]
                )
                .into_bytes(),
            )
        };
        let first = serve(&path, answer);
        let spdk = Spdk::new(&path, Duration::from_secs(5));
        assert_eq!(spdk.version().await.unwrap(), "SPDK v26.05");
        assert!(spdk.call("quit", None).await.is_err());
        first.await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let second = serve(&path, answer);
        assert_eq!(spdk.version().await.unwrap(), "SPDK v26.05");
        drop(spdk);
        second.await.unwrap();
    }
}
