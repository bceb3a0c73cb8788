//! Blocking host-side client for the agent protocol.
//!
//! Every function drives one operation over a fresh connection to the agent
//! (one connection per operation). The functions are generic over the
//! stream, so the same code works over a VM's hybrid vsock unix socket, an
//! agent listening on a unix socket on the host, or an in-memory pipe.
//! Bounding waits is the caller's job: set read/write timeouts on the
//! stream (`UnixStream::set_read_timeout`) before calling.
//!
//! Bytes go through the sans-IO codec ([`crate::protocol::codec`]), and
//! replies are interpreted by the same code as in the async client.

pub mod files;
pub mod process;
pub(crate) mod reply;
#[cfg(test)]
mod scripted;

use std::io::{self, Read, Write};
use std::thread;

use thiserror::Error;

use crate::protocol::{
    read_message, write_message, ErrorCode, ExecRequest, ExitStatus, Gap, Message, MessageKind,
    OutputChunk, Pong, ProtocolError, Resume, MAX_CHUNK,
};

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Reading or writing frames failed, or the agent sent a bad frame.
    #[error("protocol error")]
    Protocol(#[from] ProtocolError),
    /// The agent closed the connection before the final frame.
    #[error("agent closed the connection before replying")]
    Closed,
    /// The agent answered with an error frame.
    #[error("agent error ({code:?}): {message}")]
    Agent {
        /// Class of failure.
        code: ErrorCode,
        /// Detail from the agent.
        message: String,
    },
    /// The agent sent a message that does not belong in this exchange.
    #[error("unexpected {0:?} message from agent")]
    Unexpected(MessageKind),
    /// Reading the caller's stdin source failed.
    #[error("reading stdin for the program failed")]
    Stdin(#[source] io::Error),
}

/// One event of an exec: output as it arrives, then the exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes the program wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the program wrote to stderr.
    Stderr(Vec<u8>),
    /// The program ended; the last event.
    Exit(ExitStatus),
}

/// One event of an attach: a gap (output evicted before it was asked
/// for), output chunks, then `Exited` or `CaughtUp` as the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    /// A chunk of output, with its sequence number.
    Output(OutputChunk),
    /// These chunks were evicted from the agent's ring.
    Gap(Gap),
    /// The process ended and every chunk still buffered was sent.
    Exited(ExitStatus),
    /// Without follow: every chunk so far was sent (the last one's seq).
    CaughtUp(u64),
}

impl AttachEvent {
    /// Whether this event ends the stream.
    pub fn is_end(&self) -> bool {
        matches!(self, Self::Exited(_) | Self::CaughtUp(_))
    }
}

/// Reads the next message, mapping a clean close and error frames.
fn next<R: Read + ?Sized>(reader: &mut R) -> Result<Message, ClientError> {
    reply::received(read_message(reader).map_err(reply::read_error)?)
}

/// Sends `request` and reads the one reply.
fn call<S: Read + Write>(stream: &mut S, request: &Message) -> Result<Message, ClientError> {
    write_message(stream, request)?;
    next(stream)
}

/// Checks that the agent is up; returns its version and uptime.
pub fn ping<S: Read + Write>(stream: &mut S) -> Result<Pong, ClientError> {
    reply::pong(call(stream, &Message::Ping)?)
}

/// Asks the agent to power off the VM (an agent on the host exits). Returns
/// once the agent has acknowledged; the VM goes away shortly after.
pub fn shutdown<S: Read + Write>(stream: &mut S) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::Shutdown)?)
}

/// Tells the agent of a VM restored from a snapshot to reseed its kernel
/// RNG and set its clock (see [`crate::protocol::Resume`]).
pub fn resume<S: Read + Write>(stream: &mut S, resume: &Resume) -> Result<(), ClientError> {
    reply::ok(call(stream, &Message::Resume(resume.clone()))?)
}

/// Runs a program and streams its output to the callbacks as it arrives.
///
/// When `request.stdin` is set, `stdin` is sent in full (then `StdinEnd`)
/// before any output is read. That suits programs that read their input
/// before writing much output; for large stdin to a program that writes
/// while it reads (`cat` of megabytes), use [`exec_duplex`], which sends
/// stdin from another thread. `stdin` is ignored when `request.stdin` is
/// false.
pub fn exec<S: Read + Write>(
    stream: &mut S,
    request: &ExecRequest,
    stdin: &[u8],
    on_stdout: impl FnMut(&[u8]),
    on_stderr: impl FnMut(&[u8]),
) -> Result<ExitStatus, ClientError> {
    write_message(stream, &Message::Exec(request.clone()))?;
    if request.stdin {
        send_stdin(stream, stdin)?;
    }
    read_output(stream, on_stdout, on_stderr)
}

/// Like [`exec`], but stdin is copied from `stdin` by a separate thread
/// while output is read, so neither side can block the other. `reader` and
/// `writer` are the two halves of one connection (for a `UnixStream`, the
/// stream and its `try_clone`). The stdin source must reach its end: the
/// function returns after the program exits and the stdin thread is done.
pub fn exec_duplex<R, W, I>(
    reader: &mut R,
    mut writer: W,
    request: &ExecRequest,
    stdin: I,
    on_stdout: impl FnMut(&[u8]),
    on_stderr: impl FnMut(&[u8]),
) -> Result<ExitStatus, ClientError>
where
    R: Read,
    W: Write + Send,
    I: Read + Send,
{
    write_message(&mut writer, &Message::Exec(request.clone()))?;
    if !request.stdin {
        return read_output(reader, on_stdout, on_stderr);
    }
    thread::scope(|scope| {
        let feeder = scope.spawn(move || copy_stdin(&mut writer, stdin));
        let result = read_output(reader, on_stdout, on_stderr);
        let fed = feeder.join().unwrap_or(Ok(()));
        match (result, fed) {
            // A program that exits without reading all its input makes the
            // agent drop the rest; that is not an error of the exec.
            (Ok(_), Err(e @ ClientError::Stdin(_))) => Err(e),
            (result, _) => result,
        }
    })
}

fn send_stdin<W: Write + ?Sized>(writer: &mut W, data: &[u8]) -> Result<(), ClientError> {
    for chunk in data.chunks(MAX_CHUNK) {
        write_message(writer, &Message::StdinChunk(chunk.to_vec()))?;
    }
    write_message(writer, &Message::StdinEnd)?;
    Ok(())
}

fn copy_stdin<W: Write, I: Read>(writer: &mut W, mut source: I) -> Result<(), ClientError> {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Still close the program's stdin so it does not wait forever.
                let _ = write_message(writer, &Message::StdinEnd);
                return Err(ClientError::Stdin(e));
            }
        };
        write_message(writer, &Message::StdinChunk(buf[..n].to_vec()))?;
    }
    write_message(writer, &Message::StdinEnd)?;
    Ok(())
}

fn read_output<R: Read + ?Sized>(
    reader: &mut R,
    mut on_stdout: impl FnMut(&[u8]),
    mut on_stderr: impl FnMut(&[u8]),
) -> Result<ExitStatus, ClientError> {
    loop {
        match reply::exec_event(next(reader)?)? {
            ExecEvent::Stdout(data) => on_stdout(&data),
            ExecEvent::Stderr(data) => on_stderr(&data),
            ExecEvent::Exit(status) => return Ok(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::scripted::Scripted;

    #[test]
    fn exec_collects_output_and_sends_stdin() {
        let exit = ExitStatus {
            code: Some(0),
            ..ExitStatus::default()
        };
        let mut s = Scripted::new(&[
            Message::Stdout(b"a".to_vec()),
            Message::Stderr(b"b".to_vec()),
            Message::Stdout(vec![0, 1]),
            Message::Exit(exit),
        ]);
        let req = ExecRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..ExecRequest::default()
        };
        let stdin = vec![7u8; MAX_CHUNK + 10];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = exec(
            &mut s,
            &req,
            &stdin,
            |d| out.extend_from_slice(d),
            |d| err.extend_from_slice(d),
        )
        .expect("exec");
        assert_eq!(status, exit);
        assert_eq!(out, [b'a', 0, 1]);
        assert_eq!(err, b"b");
        let sent = s.sent();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[0], Message::Exec(req));
        assert_eq!(sent[1], Message::StdinChunk(stdin[..MAX_CHUNK].to_vec()));
        assert_eq!(sent[2], Message::StdinChunk(stdin[MAX_CHUNK..].to_vec()));
        assert_eq!(sent[3], Message::StdinEnd);
    }

    #[test]
    fn error_frame_and_early_close_are_errors() {
        let mut s = Scripted::new(&[Message::error(ErrorCode::SpawnFailed, "nope")]);
        let err =
            exec(&mut s, &ExecRequest::default(), &[], |_| {}, |_| {}).expect_err("must fail");
        assert!(matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::SpawnFailed,
                ..
            }
        ));
        let mut s = Scripted::new(&[Message::Stdout(b"x".to_vec())]);
        let err =
            exec(&mut s, &ExecRequest::default(), &[], |_| {}, |_| {}).expect_err("must fail");
        assert!(matches!(err, ClientError::Closed), "{err:?}");
    }

    #[test]
    fn ping_and_shutdown_check_reply_kind() {
        let pong = Pong {
            agent_version: "1".into(),
            uptime_ms: 5,
            sandbox: "root=/".into(),
        };
        let mut s = Scripted::new(&[Message::Pong(pong.clone())]);
        assert_eq!(ping(&mut s).expect("ping"), pong);
        assert_eq!(s.sent(), [Message::Ping]);
        let mut s = Scripted::new(&[Message::Pong(pong)]);
        assert!(matches!(
            shutdown(&mut s),
            Err(ClientError::Unexpected(MessageKind::Pong))
        ));
        let mut s = Scripted::new(&[Message::Ok]);
        shutdown(&mut s).expect("shutdown");
    }
}
