//! Calls that open a stream: the serial console (`virDomainOpenConsole`). The call's reply
//! comes first; then the stream's task carries the server's output to the client as
//! `VIR_NET_STREAM` packets (`CONTINUE` with raw bytes, an empty one for end of file) and
//! the client's packets (keystrokes, finish, abort) to the server; a finish or an abort is
//! confirmed with an empty `OK` packet, as libvirtd does.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::driver::ConsoleSession;
use crate::protocol::header::{
    frame, Header, MessageType, Status, PROTOCOL_VERSION, REMOTE_PROGRAM,
};
use crate::rpc::client::{PendingStream, StreamIn};

/// The most a stream packet carries (`VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX` is 262,120).
const CHUNK: usize = 64 * 1024;
/// Client packets a stream holds before the reader waits for it (with the reader's limit
/// on their size, at most 2 MiB per stream).
const INBOX: usize = 8;

pub(super) async fn call(
    c: &Arc<Client>,
    proc_: i32,
    serial: u32,
    args: &[u8],
) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        p::DOMAIN_OPEN_CONSOLE => {
            let a: DomainOpenConsoleArgs = dec(args)?;
            let session = d
                .open_console(&dom(c, &a.dom)?, a.dev_name.as_deref(), a.flags)
                .await?;
            let (tx, rx) = tokio::sync::mpsc::channel(INBOX);
            let task = Box::pin(console_stream(c.clone(), proc_, serial, session, rx));
            c.with(|s| {
                s.streams.insert(serial, tx);
                s.pending_streams.insert(serial, PendingStream(task));
            });
            void()
        }
        _ => Err(unhandled(proc_)),
    }
}

/// A stream packet of the stream `(proc_, serial)`.
fn packet(proc_: i32, serial: u32, status: Status, data: &[u8]) -> Vec<u8> {
    let h = Header {
        prog: REMOTE_PROGRAM,
        vers: PROTOCOL_VERSION,
        proc_,
        mtype: MessageType::Stream as u32,
        serial,
        status: status as u32,
    };
    frame(&h, data)
}

/// The console's stream until the client finishes or aborts it, or goes away. The
/// server's end (its output closed, a session that took over, the run over) is sent as end
/// of file and frees the console; the client then finishes, which is confirmed.
async fn console_stream(
    c: Arc<Client>,
    proc_: i32,
    serial: u32,
    session: ConsoleSession,
    mut rx: tokio::sync::mpsc::Receiver<StreamIn>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let taken_over = session.taken_over.clone();
    let mut open = Some(session);
    loop {
        let mut ended = false;
        let mut finished = false;
        match open.as_mut() {
            Some(s) => tokio::select! {
                r = s.io.output.read(&mut buf) => match r {
                    Ok(n) if n > 0 => {
                        if !c.out.wait_room().await {
                            break;
                        }
                        c.send(packet(proc_, serial, Status::Continue, &buf[..n]));
                    }
                    _ => ended = true,
                },
                m = rx.recv() => match m {
                    Some(StreamIn::Data(b)) => ended = s.io.input.write_all(&b).await.is_err(),
                    Some(StreamIn::Finish) | Some(StreamIn::Abort) => finished = true,
                    None => break,
                },
                _ = taken_over.notified() => ended = true,
                _ = tick.tick() => ended = s.run_ended(),
            },
            // Ended on this side: waiting for the client to finish.
            None => match rx.recv().await {
                Some(StreamIn::Finish) | Some(StreamIn::Abort) => {
                    c.send(packet(proc_, serial, Status::Ok, &[]));
                    break;
                }
                Some(StreamIn::Data(_)) => {}
                None => break,
            },
        }
        if finished {
            // The console is free before the client hears that its stream is finished.
            drop(open.take());
            c.send(packet(proc_, serial, Status::Ok, &[]));
            break;
        }
        if ended {
            open = None;
            c.send(packet(proc_, serial, Status::Continue, &[]));
        }
    }
    c.with(|s| s.streams.remove(&serial));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_packets_are_raw_bytes_behind_the_header() {
        // libvirt's framing of console data (virnetprotocol.x): length, program, version,
        // procedure 201, type STREAM (3), the opening call's serial, status CONTINUE (2),
        // then the bytes themselves: no XDR length, no padding.
        let p = packet(p::DOMAIN_OPEN_CONSOLE, 7, Status::Continue, b"hi!");
        let want: &[u8] = &[
            0, 0, 0, 31, 0x20, 0x00, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 201, 0, 0, 0, 3, 0, 0, 0, 7,
            0, 0, 0, 2, b'h', b'i', b'!',
        ];
        assert_eq!(p, want);
        // End of file: CONTINUE with nothing; the finish confirmation: OK with nothing.
        assert_eq!(packet(201, 7, Status::Continue, &[]).len(), 28);
        assert_eq!(packet(201, 7, Status::Ok, &[])[27], 0);
    }
}
