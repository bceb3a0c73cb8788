//! The host<->guest wire protocol.
//!
//! One connection carries one operation: the host sends a request
//! ([`Message::Ping`], [`Message::Exec`] optionally followed by stdin frames,
//! or [`Message::Shutdown`]) and the agent answers with a response stream
//! that always ends in a final frame ([`Message::Pong`], [`Message::Exit`],
//! [`Message::Ok`] or [`Message::Error`]).
//!
//! Each message travels in one frame (see [`frame`] for the header layout);
//! its body uses the little-endian field encoding described in `wire`.

pub mod files;
pub mod frame;
pub mod message;
mod wire;

use std::io::{Read, Write};

use thiserror::Error;

pub use frame::{read_frame, write_frame, Frame, FrameError, FrameHeader};
pub use message::{
    ErrorCode, ExecRequest, ExitStatus, Message, MessageKind, Pong, DEFAULT_MAX_OUTPUT_BYTES,
};
pub use wire::DecodeError;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Protocol version carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest frame payload either side accepts (1 MiB).
pub const MAX_FRAME_PAYLOAD: u32 = 1 << 20;

/// Largest stdout/stderr/stdin chunk carried in one frame. Leaves room for
/// the 4-byte length prefix inside the payload.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Why a message could not be read or written.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The frame layer failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame was sound but its body is not a valid message.
    #[error("invalid message body")]
    Decode(#[from] DecodeError),
}

impl ProtocolError {
    /// The error code to send back to a peer whose frame caused this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Frame(_) => ErrorCode::BadFrame,
            Self::Decode(_) => ErrorCode::BadRequest,
        }
    }
}

/// Reads and decodes one message.
pub fn read_message<R: Read + ?Sized>(reader: &mut R) -> Result<Message, ProtocolError> {
    let frame = read_frame(reader)?;
    Ok(Message::decode(frame.kind, &frame.payload)?)
}

/// Encodes and writes one message as a single frame.
pub fn write_message<W: Write + ?Sized>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ProtocolError> {
    write_frame(writer, message.kind() as u8, &message.encode_body())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn messages_stream_back_to_back() {
        let msgs = [
            Message::Stdout(vec![0, 1, 2]),
            Message::Stderr(b"err".to_vec()),
            Message::Exit(ExitStatus {
                code: Some(3),
                ..ExitStatus::default()
            }),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_message(&mut buf, m).expect("write");
        }
        let mut r = Cursor::new(buf);
        for m in &msgs {
            assert_eq!(&read_message(&mut r).expect("read"), m);
        }
        assert!(matches!(
            read_message(&mut r),
            Err(ProtocolError::Frame(FrameError::Closed))
        ));
    }

    #[test]
    fn largest_chunk_fits_a_frame() {
        let msg = Message::Stdout(vec![0xEE; MAX_CHUNK]);
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).expect("write");
        assert_eq!(read_message(&mut Cursor::new(buf)).expect("read"), msg);
    }

    #[test]
    fn garbage_payload_with_known_kind_is_a_decode_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, MessageKind::Exec as u8, &[0xff; 13]).expect("write");
        let err = read_message(&mut Cursor::new(buf)).expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::BadRequest);
        let mut buf = Vec::new();
        write_frame(&mut buf, 0x42, &[]).expect("write");
        let err = read_message(&mut Cursor::new(buf)).expect_err("must fail");
        assert!(matches!(
            err,
            ProtocolError::Decode(DecodeError::UnknownKind(0x42))
        ));
    }
}
