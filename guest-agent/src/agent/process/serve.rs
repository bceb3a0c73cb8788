//! The process requests on a connection: start, list, attach, wait,
//! stdin, signal, collect.
//!
//! Handlers that wait (attach with follow, wait) wake at least every
//! `HANGUP_CHECK` to see whether the host is still there, so an abandoned
//! connection does not hold its slot until the process ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_agent::protocol::process::MAX_WAIT_MS;
use kiln_agent::protocol::{write_message, Attach, ErrorCode, Message, OutputChunk, Signal, Wait};

use super::super::conn::Conn;
use super::super::klog::{chain, klog};
use super::super::sandbox::Sandbox;
use super::{BatchEnd, ProcessError, StartError, StartOptions, StdinError, Table, TableError};

/// How often a waiting handler checks that the host is still there.
const HANGUP_CHECK: Duration = Duration::from_secs(1);
/// How long one `WriteStdin` waits for a program that does not read; it
/// then acknowledges what fit.
const STDIN_WRITE_WAIT: Duration = Duration::from_secs(5);

/// Why a process request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Stdin(#[from] StdinError),
}

impl RequestError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Table(TableError::NoSuchProcess(_)) => ErrorCode::NoSuchProcess,
            Self::Table(TableError::StillRunning(_)) => ErrorCode::StillRunning,
            Self::Start(e) => e.code(),
            Self::Process(ProcessError::NotRunning(_)) => ErrorCode::NotRunning,
            Self::Process(ProcessError::BadSignal(_)) => ErrorCode::BadRequest,
            Self::Process(ProcessError::Signal { .. }) => ErrorCode::Internal,
            Self::Stdin(StdinError::Gap { .. }) => ErrorCode::StdinGap,
            Self::Stdin(StdinError::Closed { .. }) => ErrorCode::StdinClosed,
        }
    }
}

/// Serves one process request; the reply (or error) ends the connection.
pub fn serve(conn: &mut Conn, request: Message, table: &Arc<Table>, sandbox: &Sandbox) {
    let reply = match request {
        Message::Attach(attach) => self::attach(conn, table, attach),
        Message::Wait(wait) => self::wait(conn, table, wait),
        other => answer(other, table, sandbox).map(Some),
    };
    let reply = match reply {
        Ok(Some(reply)) => reply,
        Ok(None) => return,
        Err(err) => {
            let message = chain(&err);
            if err.code() == ErrorCode::Internal {
                klog!("process request: {message}");
            }
            Message::error(err.code(), message)
        }
    };
    let _ = write_message(conn, &reply);
}

/// The one-frame replies.
fn answer(
    request: Message,
    table: &Arc<Table>,
    sandbox: &Sandbox,
) -> Result<Message, RequestError> {
    Ok(match request {
        Message::Start(req) => {
            Message::Started(table.start(&req, StartOptions::default(), sandbox)?.id())
        }
        Message::ListProcesses => Message::Processes(table.list()),
        Message::WriteStdin(write) => {
            let process = table.get(write.id)?;
            Message::StdinAck(process.write_stdin(write.offset, &write.data, STDIN_WRITE_WAIT)?)
        }
        Message::CloseStdin(id) => {
            table.get(id)?.close_stdin();
            Message::Ok
        }
        Message::Signal(Signal { id, signal }) => {
            table.get(id)?.signal(signal)?;
            Message::Ok
        }
        Message::Collect(id) => Message::Exit(table.collect(id)?.exit_status().unwrap_or_default()),
        other => {
            let detail = format!("{:?} is not a process request", other.kind());
            Message::error(ErrorCode::BadRequest, detail)
        }
    })
}

/// Streams the ring from `after_seq`; `None` when the stream itself went
/// out (or the host left) and nothing more is to be said.
fn attach(
    conn: &mut Conn,
    table: &Table,
    Attach {
        id,
        after_seq,
        follow,
    }: Attach,
) -> Result<Option<Message>, RequestError> {
    let process = table.get(id)?;
    let mut cursor = after_seq;
    loop {
        let batch = process.next_batch(cursor, follow, HANGUP_CHECK);
        let mut frames = Vec::with_capacity(batch.chunks.len() + 1);
        if let Some(gap) = batch.gap {
            cursor = gap.last_seq;
            frames.push(Message::Gap(gap));
        }
        for chunk in batch.chunks {
            cursor = chunk.seq;
            frames.push(Message::Output(OutputChunk {
                seq: chunk.seq,
                stream: chunk.stream,
                data: chunk.data,
            }));
        }
        let idle = frames.is_empty();
        for frame in &frames {
            if write_message(conn, frame).is_err() {
                return Ok(None);
            }
        }
        match batch.end {
            Some(BatchEnd::Exited(status)) => return Ok(Some(Message::Exit(status))),
            Some(BatchEnd::CaughtUp(last)) => return Ok(Some(Message::CaughtUp(last))),
            None if idle && conn.peer_closed() => return Ok(None),
            None => {}
        }
    }
}

fn wait(conn: &Conn, table: &Table, wait: Wait) -> Result<Option<Message>, RequestError> {
    let process = table.get(wait.id)?;
    let deadline = Instant::now() + Duration::from_millis(wait.timeout_ms.min(MAX_WAIT_MS));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(status) = process.wait_exit(left.min(HANGUP_CHECK)) {
            return Ok(Some(Message::Exit(status)));
        }
        if Instant::now() >= deadline {
            return Ok(Some(Message::Running));
        }
        if conn.peer_closed() {
            return Ok(None);
        }
    }
}
