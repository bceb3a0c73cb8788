//! The host<->guest wire protocol.
//!
//! One connection carries one operation: the host sends a request
//! ([`Message::Ping`], [`Message::Exec`] optionally followed by stdin frames,
//! [`Message::Shutdown`], a files request (see [`files`]) or a process
//! request (see [`process`])) and the agent answers with a response stream
//! that always ends in a final frame ([`Message::Pong`], [`Message::Exit`],
//! [`Message::Ok`], [`Message::Error`], ...).
//!
//! Each message travels in one frame (see [`frame`] for the header layout);
//! its body uses the little-endian field encoding described in `wire`.
//! [`codec`] turns bytes into messages and back without doing any I/O;
//! [`read_message`] and [`write_message`] are its blocking adapters.

pub mod codec;
pub mod files;
pub mod frame;
pub mod message;
pub mod process;
mod wire;

use std::io::{Read, Write};

use thiserror::Error;

pub use codec::{encode_message, encode_to_vec, MessageDecoder};
pub use frame::{read_frame, write_frame, Frame, FrameDecoder, FrameError, FrameHeader};
pub use message::{
    ErrorCode, ExecRequest, ExitStatus, Message, MessageKind, Pong, Resume,
    DEFAULT_MAX_OUTPUT_BYTES, MAX_RESUME_SEED,
};
pub use process::{Attach, Gap, OutputChunk, OutputStream, ProcessInfo, Signal, StdinWrite, Wait};
pub use wire::DecodeError;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host vsock port of the egress proxy: the guest agent's forwarder
/// connects to CID 2 on this port, which kiln-vmm hands to the unix socket
/// `<vsock uds>_1080` where the daemon's proxy listens (only for a sandbox
/// with an egress allowlist).
pub const EGRESS_VSOCK_PORT: u32 = 1080;

/// Where the guest agent's egress forwarder listens inside the guest;
/// programs get `HTTP_PROXY`/`HTTPS_PROXY=http://` this.
pub const EGRESS_GUEST_ADDR: &str = "127.0.0.1:3128";

/// Protocol version carried in every frame header (3: process table).
pub const PROTOCOL_VERSION: u8 = 3;

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

/// Reads and decodes one message (a blocking adapter over the sans-IO
/// decoder; it never reads past the message).
pub fn read_message<R: Read + ?Sized>(reader: &mut R) -> Result<Message, ProtocolError> {
    let frame = read_frame(reader)?;
    Ok(Message::decode(frame.kind, &frame.payload)?)
}

/// Encodes and writes one message as a single frame (one `write_all`),
/// then flushes.
pub fn write_message<W: Write + ?Sized>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ProtocolError> {
    let buf = encode_to_vec(message)?;
    writer.write_all(&buf).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)?;
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
