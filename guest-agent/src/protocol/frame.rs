//! Frame layer: an 8-byte header followed by a bounded payload.
//!
//! ```text
//! offset  size  field
//! 0       2     magic   = 0x4B4C ("LK" on the wire, little endian u16)
//! 2       1     version = PROTOCOL_VERSION
//! 3       1     kind    (message kind, see `MessageKind`)
//! 4       4     payload length, little endian, <= MAX_FRAME_PAYLOAD
//! 8       len   payload (message body)
//! ```
//!
//! The header is validated before the payload is read: a hostile length is
//! rejected without allocating or reading it.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::{MAX_FRAME_PAYLOAD, PROTOCOL_VERSION};

/// Magic number at the start of every frame.
pub const FRAME_MAGIC: u16 = 0x4B4C;

/// Size of the frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 8;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly before the first header byte.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside the header.
    #[error("truncated frame header: got {0} of 8 bytes")]
    TruncatedHeader(usize),
    /// The stream ended inside the payload.
    #[error("truncated frame payload: got {got} of {expected} bytes")]
    TruncatedPayload {
        /// Length announced in the header.
        expected: u32,
        /// Bytes actually received.
        got: u64,
    },
    /// The frame does not start with [`FRAME_MAGIC`].
    #[error("bad frame magic {0:#06x}")]
    BadMagic(u16),
    /// The frame carries a protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The announced payload length exceeds [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the maximum of {MAX_FRAME_PAYLOAD}")]
    TooLarge(u64),
    /// Reading or writing the stream failed.
    #[error("frame i/o failed")]
    Io(#[source] io::Error),
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message kind byte (not yet checked against known kinds).
    pub kind: u8,
    /// Payload length, at most [`MAX_FRAME_PAYLOAD`].
    pub len: u32,
}

impl FrameHeader {
    /// Encodes the header for the current protocol version.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[2] = PROTOCOL_VERSION;
        out[3] = self.kind;
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Decodes and validates a header: magic, version and length bound.
    pub fn decode(raw: &[u8; FRAME_HEADER_LEN]) -> Result<Self, FrameError> {
        let magic = u16::from_le_bytes([raw[0], raw[1]]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if raw[2] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(raw[2]));
        }
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(u64::from(len)));
        }
        Ok(Self { kind: raw[3], len })
    }
}

/// A raw frame: kind byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message kind byte.
    pub kind: u8,
    /// Payload bytes, at most [`MAX_FRAME_PAYLOAD`].
    pub payload: Vec<u8>,
}

/// Reads one frame. Returns [`FrameError::Closed`] on a clean end of stream
/// before the header.
pub fn read_frame<R: Read + ?Sized>(reader: &mut R) -> Result<Frame, FrameError> {
    let mut raw = [0u8; FRAME_HEADER_LEN];
    let got = read_full(reader, &mut raw)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < FRAME_HEADER_LEN {
        return Err(FrameError::TruncatedHeader(got));
    }
    let header = FrameHeader::decode(&raw)?;
    let len = usize::try_from(header.len).map_err(|_| FrameError::TooLarge(header.len.into()))?;
    // `len` is bounded by MAX_FRAME_PAYLOAD, checked in `decode`.
    let mut payload = vec![0u8; len];
    let got = read_full(reader, &mut payload)?;
    if got < len {
        return Err(FrameError::TruncatedPayload {
            expected: header.len,
            got: got as u64,
        });
    }
    Ok(Frame {
        kind: header.kind,
        payload,
    })
}

/// Writes one frame (header and payload in a single `write_all`) and flushes.
pub fn write_frame<W: Write + ?Sized>(
    writer: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_PAYLOAD)
        .ok_or(FrameError::TooLarge(payload.len() as u64))?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&FrameHeader { kind, len }.encode());
    buf.extend_from_slice(payload);
    writer.write_all(&buf).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(magic: u16, version: u8, kind: u8, len: u32) -> Vec<u8> {
        let mut v = magic.to_le_bytes().to_vec();
        v.push(version);
        v.push(kind);
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    /// A reader that fails the test if more than `limit` bytes are requested
    /// in total, proving that no oversized payload read is attempted.
    struct Stingy {
        data: Cursor<Vec<u8>>,
        asked: usize,
    }

    impl Read for Stingy {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked += buf.len();
            self.data.read(buf)
        }
    }

    #[test]
    fn round_trip_binary_payload() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let mut buf = Vec::new();
        write_frame(&mut buf, 0x82, &payload).expect("write");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + payload.len());
        let frame = read_frame(&mut Cursor::new(buf)).expect("read");
        assert_eq!(frame.kind, 0x82);
        assert_eq!(frame.payload, payload);
    }

    #[test]
    fn zero_length_payload() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 1, &[]).expect("write");
        assert_eq!(buf, header(FRAME_MAGIC, PROTOCOL_VERSION, 1, 0));
        let frame = read_frame(&mut Cursor::new(buf)).expect("read");
        assert!(frame.payload.is_empty());
    }

    #[test]
    fn clean_eof_is_closed() {
        let err = read_frame(&mut Cursor::new(Vec::new())).expect_err("must fail");
        assert!(matches!(err, FrameError::Closed), "{err:?}");
    }

    #[test]
    fn truncated_header() {
        for n in 1..FRAME_HEADER_LEN {
            let raw = header(FRAME_MAGIC, PROTOCOL_VERSION, 1, 0);
            let err = read_frame(&mut Cursor::new(raw[..n].to_vec())).expect_err("must fail");
            assert!(
                matches!(err, FrameError::TruncatedHeader(got) if got == n),
                "{err:?}"
            );
        }
    }

    #[test]
    fn truncated_payload() {
        let mut raw = header(FRAME_MAGIC, PROTOCOL_VERSION, 0x82, 10);
        raw.extend_from_slice(b"abc");
        let err = read_frame(&mut Cursor::new(raw)).expect_err("must fail");
        assert!(
            matches!(
                err,
                FrameError::TruncatedPayload {
                    expected: 10,
                    got: 3
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_magic() {
        let raw = header(0x1234, PROTOCOL_VERSION, 1, 0);
        let err = read_frame(&mut Cursor::new(raw)).expect_err("must fail");
        assert!(matches!(err, FrameError::BadMagic(0x1234)), "{err:?}");
        let err =
            read_frame(&mut Cursor::new(b"GET / HTTP/1.1\r\n".to_vec())).expect_err("must fail");
        assert!(matches!(err, FrameError::BadMagic(_)), "{err:?}");
    }

    #[test]
    fn unknown_version() {
        let raw = header(FRAME_MAGIC, PROTOCOL_VERSION.wrapping_add(1), 1, 0);
        let err = read_frame(&mut Cursor::new(raw)).expect_err("must fail");
        assert!(matches!(err, FrameError::UnsupportedVersion(_)), "{err:?}");
    }

    #[test]
    fn oversized_length_is_not_read_or_allocated() {
        for len in [MAX_FRAME_PAYLOAD + 1, u32::MAX] {
            let mut stingy = Stingy {
                data: Cursor::new(header(FRAME_MAGIC, PROTOCOL_VERSION, 0x82, len)),
                asked: 0,
            };
            let err = read_frame(&mut stingy).expect_err("must fail");
            assert!(
                matches!(err, FrameError::TooLarge(l) if l == u64::from(len)),
                "{err:?}"
            );
            assert_eq!(stingy.asked, FRAME_HEADER_LEN, "payload must not be read");
        }
    }

    #[test]
    fn max_length_is_accepted_and_larger_write_rejected() {
        let payload = vec![0xAAu8; MAX_FRAME_PAYLOAD as usize];
        let mut buf = Vec::new();
        write_frame(&mut buf, 0x83, &payload).expect("write max");
        assert_eq!(
            read_frame(&mut Cursor::new(buf))
                .expect("read")
                .payload
                .len(),
            payload.len()
        );
        let too_big = vec![0u8; MAX_FRAME_PAYLOAD as usize + 1];
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, 0x83, &too_big),
            Err(FrameError::TooLarge(_))
        ));
        assert!(sink.is_empty(), "nothing written for a rejected frame");
    }

    #[test]
    fn io_errors_propagate() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        }
        assert!(matches!(read_frame(&mut Broken), Err(FrameError::Io(_))));
    }
}
