//! The stdin thread of an exec: reads the rest of the request from the
//! connection, feeds stdin frames to the program, and tells the pump when
//! the host hangs up or misbehaves.

use std::io::Write;
use std::process::ChildStdin;

use kiln_agent::protocol::{read_message, ErrorCode, FrameError, Message, ProtocolError};

use super::super::conn::Conn;
use super::super::klog::chain;
use super::pump::{HostEvent, Shared};

/// Runs until the connection ends or carries something unexpected.
///
/// After `StdinEnd` (or when the request had no stdin) the only thing the
/// host may do is close the connection, which ends the exec. If the program
/// stops reading stdin, the rest of the chunks are read and dropped.
pub fn feed(mut conn: Conn, mut pipe: Option<ChildStdin>, expect_stdin: bool, shared: &Shared) {
    let mut open = expect_stdin;
    loop {
        let event = match read_message(&mut conn) {
            Ok(Message::StdinChunk(data)) if open => {
                if let Some(p) = pipe.as_mut() {
                    if p.write_all(&data).is_err() {
                        pipe = None;
                    }
                }
                continue;
            }
            Ok(Message::StdinEnd) if open => {
                open = false;
                pipe = None;
                continue;
            }
            Ok(other) => HostEvent::Bad(
                ErrorCode::BadRequest,
                format!("unexpected {:?} message during exec", other.kind()),
            ),
            Err(ProtocolError::Frame(FrameError::Closed | FrameError::Io(_))) => HostEvent::Gone,
            Err(e) => HostEvent::Bad(e.code(), chain(&e)),
        };
        shared.set_host(event);
        return;
    }
}
