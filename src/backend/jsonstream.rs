//! Bare concatenated JSON values over a byte stream, the framing both OVSDB (RFC 7047) and
//! SPDK's JSON-RPC server use: no delimiter, no length prefix. Values are split with
//! serde_json's streaming deserializer as bytes arrive.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why [`read_values`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed the stream (or reading failed).
    Closed,
    /// The peer sent bytes that are not JSON.
    Malformed,
}

/// Reads JSON values from `r` and hands each to `on_value`, in order, until the stream ends.
pub async fn read_values<R: AsyncRead + Unpin>(mut r: R, mut on_value: impl FnMut(Value)) -> End {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        for v in stream.by_ref() {
            match v {
                Ok(v) => on_value(v),
                Err(e) if e.is_eof() => break,
                Err(_) => return End::Malformed,
            }
        }
        let used = stream.byte_offset();
        buf.drain(..used);
    }
}

/// Writes each message from `rx` to `w` until the channel closes or writing fails, then shuts
/// the write side down, so the peer sees the end even when the read side lives on (a
/// stream split in two halves stays open while either is alive).
pub async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(msg) = rx.recv().await {
        if w.write_all(&msg).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_values_across_reads_and_within_one() {
        let (mut a, b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            a.write_all(br#"{"id":1}{"id""#).await.unwrap();
            tokio::task::yield_now().await;
            a.write_all(br#":2} [3,4]"#).await.unwrap();
        });
        let mut got = Vec::new();
        let end = read_values(b, |v| got.push(v)).await;
        writer.await.unwrap();
        assert_eq!(end, End::Closed);
        assert_eq!(
            got,
            vec![
                serde_json::json!({"id":1}),
                serde_json::json!({"id":2}),
                serde_json::json!([3, 4])
            ]
        );
    }

    #[tokio::test]
    async fn reports_malformed_input() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"{\"a\":1} nope").await.unwrap();
        drop(a);
        let mut got = 0;
        assert_eq!(read_values(b, |_| got += 1).await, End::Malformed);
        assert_eq!(got, 1);
    }
}
