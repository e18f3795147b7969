//! XDR (RFC 4506) primitives, written for the libvirt remote protocol.
//!
//! Every wire type implements [`Xdr`]. Structs are declared with [`xdr_struct!`], which encodes
//! fields in declaration order. Decoding never allocates more than the frame could hold: counts and
//! lengths are checked against the bytes that remain before anything is reserved.

use std::fmt;

/// Longest string the protocol allows (`REMOTE_STRING_MAX`, 4 MiB).
pub const STRING_MAX: usize = 4 * 1024 * 1024;

/// A decoding failure. The text goes into libvirt's "Unable to decode message payload" error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdrError(pub String);

impl fmt::Display for XdrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XdrError {}

/// Result of a decode.
pub type XdrResult<T> = Result<T, XdrError>;

/// A cursor over a received payload.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> XdrResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(XdrError(format!(
                "need {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn word(&mut self) -> XdrResult<[u8; 4]> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// Skips the zero padding after `len` opaque bytes.
    fn pad(&mut self, len: usize) -> XdrResult<()> {
        let p = (4 - len % 4) % 4;
        self.take(p).map(|_| ())
    }

    /// Fails if anything is left: a payload must be consumed exactly.
    pub fn finish(&self) -> XdrResult<()> {
        if self.remaining() != 0 {
            return Err(XdrError(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }

    /// Reads a count or length and checks it against what could possibly follow
    /// (each element takes at least `min_elem` bytes) and an explicit `max`.
    pub fn count(&mut self, max: usize, min_elem: usize) -> XdrResult<usize> {
        let n = u32::decode(self)? as usize;
        if n > max {
            return Err(XdrError(format!("array length {n} exceeds maximum {max}")));
        }
        if n.saturating_mul(min_elem) > self.remaining() {
            return Err(XdrError(format!("array length {n} exceeds the message")));
        }
        Ok(n)
    }
}

/// A type with an XDR wire form.
pub trait Xdr: Sized {
    /// Appends the encoding of `self`.
    fn encode(&self, w: &mut Vec<u8>);
    /// Reads one value.
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self>;
}

/// Decodes a whole payload, rejecting trailing bytes.
pub fn from_bytes<T: Xdr>(buf: &[u8]) -> XdrResult<T> {
    let mut r = Reader::new(buf);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Encodes a value into a fresh buffer.
pub fn to_bytes<T: Xdr>(v: &T) -> Vec<u8> {
    let mut w = Vec::new();
    v.encode(&mut w);
    w
}

impl Xdr for () {
    fn encode(&self, _: &mut Vec<u8>) {}
    fn decode(_: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(())
    }
}

impl Xdr for u32 {
    fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(u32::from_be_bytes(r.word()?))
    }
}

impl Xdr for i32 {
    fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(i32::from_be_bytes(r.word()?))
    }
}

impl Xdr for u64 {
    fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let b = r.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

impl Xdr for i64 {
    fn encode(&self, w: &mut Vec<u8>) {
        (*self as u64).encode(w)
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(u64::decode(r)? as i64)
    }
}

impl Xdr for f64 {
    fn encode(&self, w: &mut Vec<u8>) {
        self.to_bits().encode(w)
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(f64::from_bits(u64::decode(r)?))
    }
}

/// XDR `bool`: 4 bytes; any non-zero value is true (glibc's `xdr_bool` accepts that too).
impl Xdr for bool {
    fn encode(&self, w: &mut Vec<u8>) {
        u32::from(*self).encode(w)
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        Ok(u32::decode(r)? != 0)
    }
}

/// `string<REMOTE_STRING_MAX>`: length, bytes, zero padding.
impl Xdr for String {
    fn encode(&self, w: &mut Vec<u8>) {
        encode_opaque(self.as_bytes(), w)
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let n = u32::decode(r)? as usize;
        if n > STRING_MAX {
            return Err(XdrError(format!(
                "string length {n} exceeds maximum {STRING_MAX}"
            )));
        }
        let b = r.take(n)?;
        r.pad(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| XdrError("string is not valid UTF-8".into()))
    }
}

fn encode_opaque(b: &[u8], w: &mut Vec<u8>) {
    (b.len() as u32).encode(w);
    w.extend_from_slice(b);
    w.resize(w.len() + (4 - b.len() % 4) % 4, 0);
}

/// Optional data (`T *`): a presence word, then the value. Any non-zero word means present
/// (go-libvirt sends `0x01000000`).
impl<T: Xdr> Xdr for Option<T> {
    fn encode(&self, w: &mut Vec<u8>) {
        match self {
            None => 0u32.encode(w),
            Some(v) => {
                1u32.encode(w);
                v.encode(w)
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        if u32::decode(r)? != 0 {
            Ok(Some(T::decode(r)?))
        } else {
            Ok(None)
        }
    }
}

/// Variable-length array `T<>`. Per-field maxima are enforced by the handlers that build
/// replies; on decode a count can never exceed what the payload could hold.
impl<T: Xdr> Xdr for Vec<T> {
    fn encode(&self, w: &mut Vec<u8>) {
        (self.len() as u32).encode(w);
        for v in self {
            v.encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let n = r.count(usize::MAX, 4)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::decode(r)?);
        }
        Ok(v)
    }
}

/// Fixed 16-byte opaque (`remote_uuid`).
impl Xdr for [u8; 16] {
    fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(self);
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let mut a = [0u8; 16];
        a.copy_from_slice(r.take(16)?);
        Ok(a)
    }
}

/// Variable-length opaque bytes (`opaque x<N>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opaque(pub Vec<u8>);

impl Xdr for Opaque {
    fn encode(&self, w: &mut Vec<u8>) {
        encode_opaque(&self.0, w)
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let n = r.count(usize::MAX, 1)?;
        let b = r.take(n)?.to_vec();
        r.pad(n)?;
        Ok(Opaque(b))
    }
}

/// `char x<N>`: a count, then every char as a 4-byte int (rpcgen's `xdr_char`).
/// libvirtd sends the terminating NUL when the string is non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CharArray(pub String);

impl Xdr for CharArray {
    fn encode(&self, w: &mut Vec<u8>) {
        if self.0.is_empty() {
            return 0u32.encode(w);
        }
        ((self.0.len() + 1) as u32).encode(w);
        for b in self.0.bytes().chain(std::iter::once(0)) {
            i32::from(b as i8).encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let n = r.count(usize::MAX, 4)?;
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let c = i32::decode(r)? as u8;
            if c == 0 {
                continue;
            }
            s.push(c);
        }
        Ok(CharArray(String::from_utf8_lossy(&s).into_owned()))
    }
}

/// `char x[N]`: exactly N chars of 4 bytes each, NUL padded (e.g. `node_get_info_ret.model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedChars<const N: usize>(pub String);

impl<const N: usize> Default for FixedChars<N> {
    fn default() -> Self {
        FixedChars(String::new())
    }
}

impl<const N: usize> Xdr for FixedChars<N> {
    fn encode(&self, w: &mut Vec<u8>) {
        let b = self.0.as_bytes();
        for i in 0..N {
            // The last char always stays NUL, as in libvirt's virStrcpyStatic.
            let c = if i + 1 < N {
                b.get(i).copied().unwrap_or(0)
            } else {
                0
            };
            i32::from(c as i8).encode(w);
        }
    }
    fn decode(r: &mut Reader<'_>) -> XdrResult<Self> {
        let mut s = Vec::with_capacity(N);
        for _ in 0..N {
            let c = i32::decode(r)? as u8;
            if c != 0 {
                s.push(c);
            }
        }
        Ok(FixedChars(String::from_utf8_lossy(&s).into_owned()))
    }
}

/// Declares a struct whose XDR form is its fields in order.
#[macro_export]
macro_rules! xdr_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl $crate::protocol::xdr::Xdr for $name {
            #[allow(unused_variables)]
            fn encode(&self, w: &mut Vec<u8>) {
                $($crate::protocol::xdr::Xdr::encode(&self.$f, w);)*
            }
            #[allow(unused_variables)]
            fn decode(r: &mut $crate::protocol::xdr::Reader<'_>) -> $crate::protocol::xdr::XdrResult<Self> {
                Ok(Self { $($f: <$t as $crate::protocol::xdr::Xdr>::decode(r)?),* })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_is_padded_to_four_bytes() {
        let b = to_bytes(&"abcde".to_string());
        assert_eq!(b, [0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
        assert_eq!(from_bytes::<String>(&b).unwrap(), "abcde");
    }

    #[test]
    fn option_accepts_any_nonzero_presence_word() {
        let b = [1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 0];
        assert_eq!(from_bytes::<Option<String>>(&b).unwrap(), Some("x".into()));
        assert_eq!(from_bytes::<Option<String>>(&[0, 0, 0, 0]).unwrap(), None);
    }

    #[test]
    fn oversized_counts_are_refused_before_allocating() {
        let b = [0xff, 0xff, 0xff, 0xf0];
        assert!(from_bytes::<Vec<u32>>(&b).is_err());
        let b = [0x00, 0x40, 0x00, 0x01];
        let e = from_bytes::<String>(&b).unwrap_err();
        assert!(e.0.contains("exceeds maximum"), "{e}");
    }

    #[test]
    fn truncated_and_trailing_input_fail() {
        assert!(from_bytes::<u64>(&[0, 0, 0, 1]).is_err());
        assert!(from_bytes::<u32>(&[0, 0, 0, 1, 0]).is_err());
    }

    #[test]
    fn char_arrays_use_four_bytes_per_char() {
        let b = to_bytes(&CharArray("ab".into()));
        assert_eq!(b, [0, 0, 0, 3, 0, 0, 0, 97, 0, 0, 0, 98, 0, 0, 0, 0]);
        assert_eq!(to_bytes(&CharArray(String::new())), [0, 0, 0, 0]);
        let f = to_bytes(&FixedChars::<32>("x86_64".into()));
        assert_eq!(f.len(), 128);
        assert_eq!(&f[..8], &[0, 0, 0, b'x', 0, 0, 0, b'8']);
        assert_eq!(from_bytes::<FixedChars<32>>(&f).unwrap().0, "x86_64");
    }

    #[test]
    fn signed_values_round_trip() {
        assert_eq!(to_bytes(&-1i32), [0xff; 4]);
        assert_eq!(from_bytes::<i64>(&to_bytes(&-5i64)).unwrap(), -5);
        assert_eq!(from_bytes::<f64>(&to_bytes(&1.5f64)).unwrap(), 1.5);
    }
}
