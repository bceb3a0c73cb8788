//! Sans-IO message codec: bytes in, messages out; messages in, bytes out.
//!
//! [`MessageDecoder`] is a [`FrameDecoder`] plus message decoding, with the
//! same limits and error mapping as the frame layer: a header is validated
//! before its payload is taken, a payload is at most
//! [`super::MAX_FRAME_PAYLOAD`], a bad frame is a [`super::FrameError`] and a bad
//! body a [`super::DecodeError`]. [`encode_message`] appends one frame to a
//! buffer. Neither reads nor writes anything: the blocking adapters
//! ([`super::read_message`], [`super::write_message`]) and the async client
//! move the bytes.

use super::frame::{payload_len, FrameDecoder, FrameHeader, FRAME_HEADER_LEN};
use super::message::Message;
use super::wire::Encoder;
use super::ProtocolError;

/// Decodes a stream of frames into messages.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    frames: FrameDecoder,
}

impl MessageDecoder {
    /// A decoder at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the next bytes of the stream go (see
    /// [`FrameDecoder::buf_mut`]): reading into it never reads past the
    /// current message.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        self.frames.buf_mut()
    }

    /// Records that `n` bytes of [`MessageDecoder::buf_mut`] were filled;
    /// returns the message once its frame is complete.
    pub fn advance(&mut self, n: usize) -> Result<Option<Message>, ProtocolError> {
        match self.frames.advance(n)? {
            Some(frame) => Ok(Some(Message::decode(frame.kind, &frame.payload)?)),
            None => Ok(None),
        }
    }

    /// Copies bytes from `input`, at most up to the end of the current
    /// message; returns how many were used and the message if complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), ProtocolError> {
        let (used, frame) = self.frames.feed(input)?;
        match frame {
            Some(frame) => Ok((used, Some(Message::decode(frame.kind, &frame.payload)?))),
            None => Ok((used, None)),
        }
    }

    /// Whether no part of a message has arrived since the last one.
    pub fn is_idle(&self) -> bool {
        self.frames.is_idle()
    }

    /// The error for the stream ending now ([`super::FrameError::Closed`] at a
    /// message boundary).
    pub fn end_of_stream(&self) -> ProtocolError {
        self.frames.end_of_stream().into()
    }
}

/// Appends `message` as one frame to `out`. On error (a body over the
/// frame limit) `out` is left as it was.
pub fn encode_message(message: &Message, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let mut e = Encoder::from_vec(std::mem::take(out));
    message.encode_into(&mut e);
    *out = e.finish();
    let len = match payload_len(out.len() - start - FRAME_HEADER_LEN) {
        Ok(len) => len,
        Err(err) => {
            out.truncate(start);
            return Err(err.into());
        }
    };
    let header = FrameHeader {
        kind: message.kind() as u8,
        len,
    };
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&header.encode());
    Ok(())
}

/// Appends `message` as one frame to a new buffer.
pub fn encode_to_vec(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    encode_message(message, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        DecodeError, ErrorCode, ExitStatus, FrameError, MessageKind, MAX_CHUNK, MAX_FRAME_PAYLOAD,
    };

    fn sample() -> Vec<Message> {
        vec![
            Message::Stdout(b"out".to_vec()),
            Message::Ping,
            Message::Stderr(vec![0; MAX_CHUNK]),
            Message::Exit(ExitStatus {
                code: Some(0),
                ..ExitStatus::default()
            }),
        ]
    }

    fn encode_all(msgs: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            encode_message(m, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn partial_feeds_of_every_size_give_the_same_messages() {
        let msgs = sample();
        let stream = encode_all(&msgs);
        for step in [1usize, 2, 3, 7, 8, 9, 4096, stream.len()] {
            let mut dec = MessageDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let (used, msg) = dec.feed(rest).expect("feed");
                    rest = &rest[used..];
                    got.extend(msg);
                }
            }
            assert_eq!(got, msgs, "step {step}");
            assert!(dec.is_idle());
            assert!(matches!(
                dec.end_of_stream(),
                ProtocolError::Frame(FrameError::Closed)
            ));
        }
    }

    #[test]
    fn reading_into_the_buffer_matches_feeding() {
        let msgs = sample();
        let stream = encode_all(&msgs);
        let mut dec = MessageDecoder::new();
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < stream.len() {
            let buf = dec.buf_mut();
            // Short reads, as a socket gives them.
            let n = buf.len().min(1000).min(stream.len() - pos);
            buf[..n].copy_from_slice(&stream[pos..pos + n]);
            pos += n;
            got.extend(dec.advance(n).expect("advance"));
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn encoding_matches_the_body_encoding_and_checks_the_limit() {
        for m in sample() {
            let framed = encode_to_vec(&m).expect("encode");
            assert_eq!(&framed[FRAME_HEADER_LEN..], m.encode_body().as_slice());
            assert_eq!(framed[3], m.kind() as u8);
        }
        let mut out = b"keep".to_vec();
        let too_big = Message::Stdout(vec![0; MAX_FRAME_PAYLOAD as usize]);
        let err = encode_message(&too_big, &mut out).expect_err("over the limit");
        assert!(matches!(err, ProtocolError::Frame(FrameError::TooLarge(_))));
        assert_eq!(out, b"keep", "buffer untouched by a failed encode");
    }

    #[test]
    fn hostile_frames_map_to_the_usual_errors() {
        // Unknown kind: a decode error (BadRequest), after the whole frame.
        let mut dec = MessageDecoder::new();
        let mut raw = FrameHeader { kind: 0x42, len: 1 }.encode().to_vec();
        raw.push(0);
        let err = dec.feed(&raw[..FRAME_HEADER_LEN]).map(|(n, _)| n);
        assert_eq!(err.ok(), Some(FRAME_HEADER_LEN));
        let err = dec
            .feed(&raw[FRAME_HEADER_LEN..])
            .expect_err("unknown kind");
        assert!(matches!(
            err,
            ProtocolError::Decode(DecodeError::UnknownKind(0x42))
        ));
        assert_eq!(err.code(), ErrorCode::BadRequest);
        // Garbage body of a known kind.
        let mut raw = FrameHeader {
            kind: MessageKind::Attach as u8,
            len: 3,
        }
        .encode()
        .to_vec();
        raw.extend_from_slice(&[1, 2, 3]);
        let mut dec = MessageDecoder::new();
        let (used, none) = dec.feed(&raw).expect("header");
        assert!(none.is_none());
        let err = dec.feed(&raw[used..]).expect_err("garbage body");
        assert!(matches!(
            err,
            ProtocolError::Decode(DecodeError::Truncated(_))
        ));
        // Oversized length: a frame error (BadFrame) from the header alone.
        let mut raw = FrameHeader { kind: 0x82, len: 0 }.encode();
        raw[4..8].copy_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_le_bytes());
        let err = MessageDecoder::new().feed(&raw).expect_err("too large");
        assert_eq!(err.code(), ErrorCode::BadFrame);
        // HTTP instead of a frame.
        let err = MessageDecoder::new()
            .feed(b"GET / HTTP/1.1\r\n")
            .expect_err("bad magic");
        assert!(matches!(err, ProtocolError::Frame(FrameError::BadMagic(_))));
    }

    #[test]
    fn truncation_is_reported_at_end_of_stream() {
        let stream = encode_all(&[Message::Stdout(b"abcdef".to_vec())]);
        let mut dec = MessageDecoder::new();
        dec.feed(&stream[..stream.len() - 1]).expect("feed");
        assert!(matches!(
            dec.end_of_stream(),
            ProtocolError::Frame(FrameError::TruncatedPayload { .. })
        ));
    }
}
