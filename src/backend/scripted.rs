//! The fuzz targets' JSON-RPC peer (for the SPDK and OVSDB clients): a server on an
//! in-memory stream whose every answer comes from the fuzz input. Only the backends' fuzz
//! bodies use it (`crate::fuzz` lists the targets).

use std::sync::{Arc, OnceLock};

/// The runtime the backend targets drive their clients on (one per process).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// What a scripted peer answers with: the JSON values of the fuzz input, in order.
pub(crate) type Script = Arc<std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>>;

/// Splits fuzz bytes into at most `max` JSON values (up to the first that does not parse).
pub(crate) fn script(data: &[u8], max: usize) -> Script {
    let values = serde_json::Deserializer::from_slice(data)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .take(max)
        .collect();
    Arc::new(std::sync::Mutex::new(values))
}

/// A JSON-RPC peer on an in-memory stream that answers every request with the next scripted
/// value: an object (not a notification) gets the request's id so the client takes it as the
/// reply; anything else (a notification, a bare value) is sent as it is and followed by
/// `fallback(id)`, so no call waits for a reply that never comes.
pub(crate) async fn scripted_peer(
    stream: tokio::io::DuplexStream,
    script: Script,
    fallback: fn(&serde_json::Value) -> serde_json::Value,
) {
    use serde_json::Value;
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = tokio::io::split(stream);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        super::jsonstream::read_values(r, |v| {
            let _ = tx.send(v);
        })
        .await;
    });
    while let Some(req) = rx.recv().await {
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        if id.is_null() {
            continue;
        }
        let next = script.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let mut out = Vec::new();
        match next {
            Some(Value::Object(mut m)) if !m.contains_key("method") => {
                m.insert("id".into(), id);
                out.push(Value::Object(m));
            }
            Some(other) => {
                out.push(other);
                out.push(fallback(&id));
            }
            None => out.push(fallback(&id)),
        }
        for v in out {
            let mut b = v.to_string().into_bytes();
            b.push(b'\n');
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    }
}
