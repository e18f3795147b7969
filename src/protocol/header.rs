//! The 24-byte message header and frame limits (libvirt `virnetprotocol.x`).

use super::xdr::{Reader, Xdr, XdrResult};

/// `VIR_NET_MESSAGE_MAX`: largest packet, not counting the 4-byte length word.
pub const MESSAGE_MAX: usize = 32 * 1024 * 1024;
/// Header size in bytes.
pub const HEADER_LEN: usize = 24;
/// The REMOTE program.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
/// The KEEPALIVE program ("keep").
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
/// Version of both programs.
pub const PROTOCOL_VERSION: u32 = 1;
/// Keepalive procedures.
pub const KEEPALIVE_PING: i32 = 1;
/// Keepalive answer.
pub const KEEPALIVE_PONG: i32 = 2;

/// `virNetMessageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MessageType {
    /// Client → server call.
    Call = 0,
    /// Server → client reply.
    Reply = 1,
    /// Asynchronous message (events, keepalive).
    Message = 2,
    /// Stream data.
    Stream = 3,
    /// Call with file descriptors.
    CallWithFds = 4,
    /// Reply with file descriptors.
    ReplyWithFds = 5,
    /// Sparse stream hole.
    StreamHole = 6,
}

impl MessageType {
    /// Parses the wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::Message,
            3 => Self::Stream,
            4 => Self::CallWithFds,
            5 => Self::ReplyWithFds,
            6 => Self::StreamHole,
            _ => return None,
        })
    }
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Success; payload is the ret struct.
    Ok = 0,
    /// Failure; payload is a `remote_error`.
    Error = 1,
    /// Streams only.
    Continue = 2,
}

/// `virNetMessageHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: i32,
    /// Raw `virNetMessageType`.
    pub mtype: u32,
    /// Serial, echoed in replies.
    pub serial: u32,
    /// Raw `virNetMessageStatus`.
    pub status: u32,
}

impl Xdr for Header {
    fn encode(&self, w: &mut Vec<u8>) {
        self.prog.encode(w);
        self.vers.encode(w);
        self.proc_.encode(w);
        self.mtype.encode(w);
        self.serial.encode(w);
        self.status.encode(w);
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(Header {
            prog: u32::decode(r)?,
            vers: u32::decode(r)?,
            proc_: i32::decode(r)?,
            mtype: u32::decode(r)?,
            serial: u32::decode(r)?,
            status: u32::decode(r)?,
        })
    }
}

impl Header {
    /// The reply header for a call: echoes prog, vers, proc and serial.
    pub fn reply_to(&self, status: Status) -> Header {
        Header {
            mtype: MessageType::Reply as u32,
            status: status as u32,
            ..*self
        }
    }
}

/// Builds a complete packet: length word, header, payload.
pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(4 + HEADER_LEN + payload.len());
    ((4 + HEADER_LEN + payload.len()) as u32).encode(&mut w);
    h.encode(&mut w);
    w.extend_from_slice(payload);
    w
}

/// Builds a packet whose payload is encoded in place (no intermediate buffer).
pub fn frame_with<T: Xdr>(h: &Header, payload: &T) -> Vec<u8> {
    let mut w = Vec::with_capacity(256);
    0u32.encode(&mut w);
    h.encode(&mut w);
    payload.encode(&mut w);
    let len = (w.len() as u32).to_be_bytes();
    w[..4].copy_from_slice(&len);
    w
}

/// Checks a received length word (which counts itself).
pub fn check_length(len: u32) -> Result<usize, String> {
    let len = len as usize;
    if len < 4 + HEADER_LEN {
        return Err(format!("packet length {len} is shorter than a header"));
    }
    if len - 4 > MESSAGE_MAX {
        return Err(format!(
            "packet {} bytes received from client too large, limit {MESSAGE_MAX}",
            len - 4
        ));
    }
    Ok(len - 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_pong_golden_bytes() {
        let h = Header {
            prog: KEEPALIVE_PROGRAM,
            vers: 1,
            proc_: KEEPALIVE_PONG,
            mtype: MessageType::Message as u32,
            serial: 0,
            status: 0,
        };
        let hex: String = frame(&h, &[]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "0000001c", "6b656570", "00000001", "00000002", "00000002", "00000000", "00000000"
            )
        );
    }

    #[test]
    fn reply_echoes_call_fields() {
        let call = Header {
            prog: REMOTE_PROGRAM,
            vers: 1,
            proc_: 23,
            mtype: 0,
            serial: 9,
            status: 0,
        };
        let r = call.reply_to(Status::Error);
        assert_eq!(
            (r.prog, r.proc_, r.serial, r.mtype, r.status),
            (REMOTE_PROGRAM, 23, 9, 1, 1)
        );
    }

    #[test]
    fn length_limits() {
        assert!(check_length(27).is_err());
        assert_eq!(check_length(28), Ok(24));
        assert!(check_length((MESSAGE_MAX + 4) as u32).is_ok());
        assert!(check_length((MESSAGE_MAX + 5) as u32).is_err());
    }
}
