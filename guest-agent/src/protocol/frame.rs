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
//!
//! Decoding is sans-IO ([`FrameDecoder`]: bytes in, frames out), shared by
//! the blocking adapters here ([`read_frame`], [`write_frame`]), the agent,
//! and the async client.

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

/// Sans-IO frame decoder: the caller moves the bytes, this only parses.
///
/// Either hand it bytes with [`FrameDecoder::feed`], or read straight into
/// [`FrameDecoder::buf_mut`] and report with [`FrameDecoder::advance`]. The
/// buffer it offers is exactly what the current frame still lacks (the rest
/// of the header, then the rest of the payload), so a caller that reads
/// into it never reads past a frame, and memory is bounded by one header
/// plus one [`MAX_FRAME_PAYLOAD`] payload. The header is validated as soon
/// as it is complete, before the payload is allocated. After an error the
/// stream is out of sync and must be dropped.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    header: [u8; FRAME_HEADER_LEN],
    header_filled: usize,
    /// The validated header of the frame whose payload is being read.
    current: Option<FrameHeader>,
    payload: Vec<u8>,
    payload_filled: usize,
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the next bytes of the stream go: never empty, never longer
    /// than what the current frame still needs.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        if self.current.is_some() {
            &mut self.payload[self.payload_filled..]
        } else {
            &mut self.header[self.header_filled..]
        }
    }

    /// Records that the first `n` bytes of [`FrameDecoder::buf_mut`] were
    /// filled; returns the frame once it is complete. `n` beyond the
    /// buffer is clamped.
    pub fn advance(&mut self, n: usize) -> Result<Option<Frame>, FrameError> {
        match self.current {
            Some(header) => {
                self.payload_filled = (self.payload_filled + n).min(self.payload.len());
                if self.payload_filled < self.payload.len() {
                    return Ok(None);
                }
                Ok(Some(self.take_frame(header.kind)))
            }
            None => {
                self.header_filled = (self.header_filled + n).min(FRAME_HEADER_LEN);
                if self.header_filled < FRAME_HEADER_LEN {
                    return Ok(None);
                }
                let decoded = FrameHeader::decode(&self.header);
                self.header_filled = 0;
                let header = decoded?;
                // Bounded by MAX_FRAME_PAYLOAD, checked in `decode`.
                let len = usize::try_from(header.len)
                    .map_err(|_| FrameError::TooLarge(header.len.into()))?;
                if len == 0 {
                    return Ok(Some(Frame {
                        kind: header.kind,
                        payload: Vec::new(),
                    }));
                }
                self.payload = vec![0; len];
                self.payload_filled = 0;
                self.current = Some(header);
                Ok(None)
            }
        }
    }

    /// Copies bytes from `input` into the current frame, at most up to its
    /// end; returns how many were used and the frame if it is complete.
    /// Call again with the rest of `input` for the next frame.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), FrameError> {
        let buf = self.buf_mut();
        let n = buf.len().min(input.len());
        buf[..n].copy_from_slice(&input[..n]);
        Ok((n, self.advance(n)?))
    }

    /// Whether no part of a frame has been received since the last one.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.header_filled == 0
    }

    /// The error for the stream ending now: [`FrameError::Closed`] at a
    /// frame boundary, a truncation error inside a frame.
    pub fn end_of_stream(&self) -> FrameError {
        match self.current {
            Some(header) => FrameError::TruncatedPayload {
                expected: header.len,
                got: self.payload_filled as u64,
            },
            None if self.header_filled == 0 => FrameError::Closed,
            None => FrameError::TruncatedHeader(self.header_filled),
        }
    }

    fn take_frame(&mut self, kind: u8) -> Frame {
        self.current = None;
        self.payload_filled = 0;
        Frame {
            kind,
            payload: std::mem::take(&mut self.payload),
        }
    }
}

/// Appends one frame (header and payload) to `out`. Nothing is appended
/// when the payload is over [`MAX_FRAME_PAYLOAD`].
pub fn encode_frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = payload_len(payload.len())?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&FrameHeader { kind, len }.encode());
    out.extend_from_slice(payload);
    Ok(())
}

/// A payload length as it goes in the header, if it is within the limit.
pub(crate) fn payload_len(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len)
        .ok()
        .filter(|len| *len <= MAX_FRAME_PAYLOAD)
        .ok_or(FrameError::TooLarge(len as u64))
}

/// Reads one frame (a blocking adapter over [`FrameDecoder`]). Returns
/// [`FrameError::Closed`] on a clean end of stream before the header.
pub fn read_frame<R: Read + ?Sized>(reader: &mut R) -> Result<Frame, FrameError> {
    let mut decoder = FrameDecoder::new();
    loop {
        let n = match reader.read(decoder.buf_mut()) {
            Ok(0) => return Err(decoder.end_of_stream()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        };
        if let Some(frame) = decoder.advance(n)? {
            return Ok(frame);
        }
    }
}

/// Writes one frame (header and payload in a single `write_all`) and flushes.
pub fn write_frame<W: Write + ?Sized>(
    writer: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode_frame(kind, payload, &mut buf)?;
    writer.write_all(&buf).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
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

    #[test]
    fn decoder_takes_frames_one_byte_at_a_time() {
        let mut stream = Vec::new();
        write_frame(&mut stream, 0x82, b"hello").expect("write");
        write_frame(&mut stream, 0x01, &[]).expect("write");
        write_frame(&mut stream, 0x83, &[7; 300]).expect("write");
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &stream {
            let (used, frame) = dec.feed(std::slice::from_ref(b)).expect("feed");
            assert_eq!(used, 1);
            frames.extend(frame);
        }
        assert!(dec.is_idle());
        assert!(matches!(dec.end_of_stream(), FrameError::Closed));
        let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.payload.len())).collect();
        assert_eq!(kinds, [(0x82, 5), (0x01, 0), (0x83, 300)]);
        assert_eq!(frames[0].payload, b"hello");
    }

    #[test]
    fn decoder_never_consumes_past_a_frame() {
        let mut stream = Vec::new();
        write_frame(&mut stream, 0x82, b"ab").expect("write");
        write_frame(&mut stream, 0x83, b"cde").expect("write");
        let mut dec = FrameDecoder::new();
        let (used, frame) = dec.feed(&stream).expect("feed");
        assert_eq!(used, FRAME_HEADER_LEN);
        assert!(frame.is_none(), "header alone is no frame");
        assert_eq!(dec.buf_mut().len(), 2, "asks for exactly the payload");
        let (used2, frame) = dec.feed(&stream[used..]).expect("feed");
        assert_eq!(used2, 2);
        assert_eq!(frame.expect("frame").payload, b"ab");
        let rest = &stream[used + used2..];
        let (_, none) = dec.feed(rest).expect("header");
        assert!(none.is_none());
        let (_, frame) = dec.feed(&rest[FRAME_HEADER_LEN..]).expect("payload");
        assert_eq!(frame.expect("frame").payload, b"cde");
    }

    #[test]
    fn decoder_reports_where_the_stream_ended() {
        let mut stream = Vec::new();
        write_frame(&mut stream, 0x82, b"abcdef").expect("write");
        let mut dec = FrameDecoder::new();
        dec.feed(&stream[..3]).expect("feed");
        assert!(matches!(
            dec.end_of_stream(),
            FrameError::TruncatedHeader(3)
        ));
        let (used, _) = dec.feed(&stream[3..FRAME_HEADER_LEN + 2]).expect("feed");
        assert_eq!(used, FRAME_HEADER_LEN - 3, "stops at the end of the header");
        dec.feed(&stream[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 2])
            .expect("feed");
        assert!(matches!(
            dec.end_of_stream(),
            FrameError::TruncatedPayload {
                expected: 6,
                got: 2
            }
        ));
        assert!(!dec.is_idle());
    }

    #[test]
    fn decoder_rejects_a_hostile_header_before_allocating() {
        let mut dec = FrameDecoder::new();
        let raw = header(FRAME_MAGIC, PROTOCOL_VERSION, 0x82, u32::MAX);
        let err = dec.feed(&raw).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge(_)), "{err:?}");
        assert!(dec.payload.capacity() == 0, "no payload buffer allocated");
        let mut dec = FrameDecoder::new();
        let err = dec
            .feed(&header(0xFFFF, PROTOCOL_VERSION, 1, 0))
            .expect_err("bad magic");
        assert!(matches!(err, FrameError::BadMagic(0xFFFF)), "{err:?}");
    }
}
