//! The stdin thread of an exec: reads the rest of the request from the
//! connection, feeds stdin frames to the program, and tells the forwarding
//! loop when the host hangs up or misbehaves.

use kiln_agent::protocol::{read_message, ErrorCode, FrameError, Message, ProtocolError};

use super::super::conn::Conn;
use super::super::klog::chain;
use super::super::process::Process;
use super::{HostEvent, HostWatch};

/// Runs until the connection ends or carries something unexpected.
///
/// After `StdinEnd` (or when the request had no stdin) the only thing the
/// host may do is close the connection, which ends the exec. If the program
/// stops reading stdin, the rest of the chunks are read and dropped.
pub fn feed(mut conn: Conn, process: &Process, expect_stdin: bool, host: &HostWatch) {
    let mut open = expect_stdin;
    loop {
        let event = match read_message(&mut conn) {
            Ok(Message::StdinChunk(data)) if open => {
                process.append_stdin(&data);
                continue;
            }
            Ok(Message::StdinEnd) if open => {
                open = false;
                process.close_stdin();
                continue;
            }
            Ok(other) => HostEvent::Bad(
                ErrorCode::BadRequest,
                format!("unexpected {:?} message during exec", other.kind()),
            ),
            Err(ProtocolError::Frame(FrameError::Closed | FrameError::Io(_))) => HostEvent::Gone,
            Err(e) => HostEvent::Bad(e.code(), chain(&e)),
        };
        host.set(event);
        process.interrupt();
        return;
    }
}
