//! Primitive field encoding for message bodies.
//!
//! Every integer is little endian. Byte strings and UTF-8 strings are a
//! `u32` length followed by the bytes; lists are a `u32` count followed by
//! the items; options are a `u8` tag (0 = none, 1 = some) followed by the
//! value. Decoding never allocates more than the bytes actually present in
//! the payload, which is itself bounded by the frame layer.

use thiserror::Error;

/// Why a message body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame kind byte names no known message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// The body ended in the middle of a field.
    #[error("message body truncated while reading {0}")]
    Truncated(&'static str),
    /// The body has bytes left over after the last field.
    #[error("{0} trailing bytes after message body")]
    TrailingBytes(usize),
    /// A string field is not valid UTF-8.
    #[error("field {0} is not valid utf-8")]
    InvalidUtf8(&'static str),
    /// An option or boolean tag is neither 0 nor 1.
    #[error("invalid tag {tag} for field {field}")]
    InvalidTag {
        /// The field being decoded.
        field: &'static str,
        /// The tag byte found.
        tag: u8,
    },
    /// A list has more items than the protocol allows.
    #[error("field {field} has {count} items, at most {max} allowed")]
    TooMany {
        /// The field being decoded.
        field: &'static str,
        /// The count announced in the body.
        count: u32,
        /// The protocol limit.
        max: u32,
    },
}

/// Appends encoded fields to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends to `buf` instead of a new buffer.
    pub(crate) fn from_vec(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Fixed-size bytes, no length prefix (e.g. a digest).
    pub(crate) fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Lengths are bounded by the frame size checked at write time, so a
    /// length above `u32::MAX` only happens for a frame that is rejected
    /// anyway; it saturates instead of wrapping.
    pub(crate) fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// A `u32` count, then each item.
    pub(crate) fn list<T>(
        &mut self,
        items: &[T],
        mut item: impl FnMut(&mut Self, &T),
    ) -> &mut Self {
        self.len(items.len());
        for it in items {
            item(self, it);
        }
        self
    }

    pub(crate) fn opt_i32(&mut self, v: Option<i32>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).i32(v),
        }
    }

    pub(crate) fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).u64(v),
        }
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).str(v),
        }
    }
}

/// Reads fields from a message body, front to back.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// Fails unless every byte of the body was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.rest.len()))
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Fixed-size bytes, no length prefix.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::InvalidTag { field, tag }),
        }
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(field))?;
        self.take(len, field)
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    }

    /// A list count, checked against `max` and against the bytes left
    /// (every item takes at least `min_item_len` bytes), so a hostile count
    /// cannot make the caller pre-allocate.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        max: u32,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(field)?;
        if count > max {
            return Err(DecodeError::TooMany { field, count, max });
        }
        let count = usize::try_from(count).map_err(|_| DecodeError::Truncated(field))?;
        if count.saturating_mul(min_item_len) > self.rest.len() {
            return Err(DecodeError::Truncated(field));
        }
        Ok(count)
    }

    /// A list: a [`Decoder::count`], then each item.
    pub(crate) fn list<T>(
        &mut self,
        field: &'static str,
        max: u32,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(field, max, min_item_len)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn tag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.bool(field)
    }

    pub(crate) fn opt_i32(&mut self, field: &'static str) -> Result<Option<i32>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.i32(field)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_string(
        &mut self,
        field: &'static str,
    ) -> Result<Option<String>, DecodeError> {
        Ok(if self.tag(field)? {
            Some(self.string(field)?)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut e = Encoder::new();
        e.u8(7)
            .bool(true)
            .u16(0xBEEF)
            .u32(0xDEAD_BEEF)
            .i32(-5)
            .u64(u64::MAX)
            .bytes(&[0, 255, 10])
            .str("héllo")
            .opt_i32(None)
            .opt_i32(Some(-1))
            .opt_u64(Some(9))
            .opt_str(Some("x"))
            .opt_str(None);
        let buf = e.finish();
        let mut d = Decoder::new(&buf);
        assert_eq!(d.u8("a"), Ok(7));
        assert_eq!(d.bool("b"), Ok(true));
        assert_eq!(d.u16("c"), Ok(0xBEEF));
        assert_eq!(d.u32("d"), Ok(0xDEAD_BEEF));
        assert_eq!(d.i32("e"), Ok(-5));
        assert_eq!(d.u64("f"), Ok(u64::MAX));
        assert_eq!(d.bytes("g"), Ok(&[0u8, 255, 10][..]));
        assert_eq!(d.string("h").as_deref(), Ok("héllo"));
        assert_eq!(d.opt_i32("i"), Ok(None));
        assert_eq!(d.opt_i32("j"), Ok(Some(-1)));
        assert_eq!(d.opt_u64("k"), Ok(Some(9)));
        assert_eq!(d.opt_string("l"), Ok(Some("x".to_owned())));
        assert_eq!(d.opt_string("m"), Ok(None));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn hostile_lengths_are_truncation_not_allocation() {
        let mut e = Encoder::new();
        e.u32(u32::MAX);
        let buf = e.finish();
        assert_eq!(
            Decoder::new(&buf).bytes("x"),
            Err(DecodeError::Truncated("x"))
        );
        assert_eq!(
            Decoder::new(&buf).count("x", u32::MAX, 1),
            Err(DecodeError::Truncated("x"))
        );
        assert_eq!(
            Decoder::new(&buf).count("x", 10, 1),
            Err(DecodeError::TooMany {
                field: "x",
                count: u32::MAX,
                max: 10
            })
        );
    }

    #[test]
    fn bad_tags_and_utf8_are_rejected() {
        assert_eq!(
            Decoder::new(&[2]).bool("t"),
            Err(DecodeError::InvalidTag { field: "t", tag: 2 })
        );
        let mut e = Encoder::new();
        e.bytes(&[0xff, 0xfe]);
        let buf = e.finish();
        assert_eq!(
            Decoder::new(&buf).string("s"),
            Err(DecodeError::InvalidUtf8("s"))
        );
        assert_eq!(
            Decoder::new(&[1, 2]).finish(),
            Err(DecodeError::TrailingBytes(2))
        );
        assert_eq!(
            Decoder::new(&[1, 2]).u32("n"),
            Err(DecodeError::Truncated("n"))
        );
    }
}
