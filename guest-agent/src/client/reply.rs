//! What a reply means: the interpretation both clients share (the blocking
//! one in [`super`], the async one in `crate::async_client`), so the only
//! thing they differ in is how bytes move.

use sha2::{Digest, Sha256};

use super::files::FilesError;
use super::{AttachEvent, ClientError, ExecEvent};
use crate::protocol::files::{Entry, FileDigest};
use crate::protocol::{ExitStatus, FrameError, Message, Pong, ProcessInfo, ProtocolError};

/// A failed read: a clean close is [`ClientError::Closed`].
pub(crate) fn read_error(e: ProtocolError) -> ClientError {
    match e {
        ProtocolError::Frame(FrameError::Closed) => ClientError::Closed,
        e => ClientError::Protocol(e),
    }
}

/// An `Error` frame becomes [`ClientError::Agent`].
pub(crate) fn received(msg: Message) -> Result<Message, ClientError> {
    match msg {
        Message::Error { code, message } => Err(ClientError::Agent { code, message }),
        msg => Ok(msg),
    }
}

fn unexpected<T>(msg: &Message) -> Result<T, ClientError> {
    Err(ClientError::Unexpected(msg.kind()))
}

/// `Pong`.
pub(crate) fn pong(msg: Message) -> Result<Pong, ClientError> {
    match msg {
        Message::Pong(pong) => Ok(pong),
        other => unexpected(&other),
    }
}

/// `Ok`.
pub(crate) fn ok(msg: Message) -> Result<(), ClientError> {
    match msg {
        Message::Ok => Ok(()),
        other => unexpected(&other),
    }
}

/// `Started{id}`.
pub(crate) fn started(msg: Message) -> Result<u64, ClientError> {
    match msg {
        Message::Started(id) => Ok(id),
        other => unexpected(&other),
    }
}

/// `Processes`.
pub(crate) fn processes(msg: Message) -> Result<Vec<ProcessInfo>, ClientError> {
    match msg {
        Message::Processes(list) => Ok(list),
        other => unexpected(&other),
    }
}

/// `Exit` (`Collect`).
pub(crate) fn exit(msg: Message) -> Result<ExitStatus, ClientError> {
    match msg {
        Message::Exit(status) => Ok(status),
        other => unexpected(&other),
    }
}

/// `Exit` or `Running` (`Wait`).
pub(crate) fn waited(msg: Message) -> Result<Option<ExitStatus>, ClientError> {
    match msg {
        Message::Exit(status) => Ok(Some(status)),
        Message::Running => Ok(None),
        other => unexpected(&other),
    }
}

/// `StdinAck{accepted}`.
pub(crate) fn stdin_ack(msg: Message) -> Result<u64, ClientError> {
    match msg {
        Message::StdinAck(accepted) => Ok(accepted),
        other => unexpected(&other),
    }
}

/// One frame of an attach stream.
pub(crate) fn attach_event(msg: Message) -> Result<AttachEvent, ClientError> {
    match msg {
        Message::Output(chunk) => Ok(AttachEvent::Output(chunk)),
        Message::Gap(gap) => Ok(AttachEvent::Gap(gap)),
        Message::Exit(status) => Ok(AttachEvent::Exited(status)),
        Message::CaughtUp(last) => Ok(AttachEvent::CaughtUp(last)),
        other => unexpected(&other),
    }
}

/// One frame of an exec stream.
pub(crate) fn exec_event(msg: Message) -> Result<ExecEvent, ClientError> {
    match msg {
        Message::Stdout(data) => Ok(ExecEvent::Stdout(data)),
        Message::Stderr(data) => Ok(ExecEvent::Stderr(data)),
        Message::Exit(status) => Ok(ExecEvent::Exit(status)),
        other => unexpected(&other),
    }
}

/// `Entry` (`Stat`).
pub(crate) fn entry(msg: Message) -> Result<Entry, ClientError> {
    match msg {
        Message::Entry(entry) => Ok(entry),
        other => unexpected(&other),
    }
}

/// `FileWritten`, which must match what was sent.
pub(crate) fn written(msg: Message, sent: FileDigest) -> Result<FileDigest, FilesError> {
    match msg {
        Message::FileWritten(written) if written == sent => Ok(written),
        Message::FileWritten(written) => Err(FilesError::Mismatch {
            expected: sent,
            got: written,
        }),
        other => Err(ClientError::Unexpected(other.kind()).into()),
    }
}

/// Size and SHA-256 of a stream of bytes, as it goes.
#[derive(Debug, Default)]
pub(crate) struct Digester {
    hasher: Sha256,
    size: u64,
}

impl Digester {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.size = self.size.saturating_add(data.len() as u64);
    }

    pub(crate) fn finish(self) -> FileDigest {
        FileDigest {
            size: self.size,
            sha256: self.hasher.finalize().into(),
        }
    }
}

/// A download in progress: the next frame is either more bytes or the
/// agent's digest, which must match what arrived.
#[derive(Debug, Default)]
pub(crate) struct DownloadCheck {
    digest: Digester,
}

/// What a download frame carries.
pub(crate) enum DownloadStep {
    /// More bytes (already counted).
    Chunk(Vec<u8>),
    /// The end; the bytes matched the agent's digest.
    Done(FileDigest),
}

impl DownloadCheck {
    pub(crate) fn step(&mut self, msg: Message) -> Result<DownloadStep, FilesError> {
        match msg {
            Message::FileChunk(data) => {
                self.digest.update(&data);
                Ok(DownloadStep::Chunk(data))
            }
            Message::FileEnd(expected) => {
                let got = std::mem::take(&mut self.digest).finish();
                if got != expected {
                    return Err(FilesError::Mismatch { expected, got });
                }
                Ok(DownloadStep::Done(got))
            }
            other => Err(ClientError::Unexpected(other.kind()).into()),
        }
    }
}

/// A listing in progress, bounded by [`super::files::MAX_LISTED_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct ListCollector {
    entries: Vec<Entry>,
}

impl ListCollector {
    /// Takes one frame; returns the whole listing after `ListEnd`.
    pub(crate) fn step(&mut self, msg: Message) -> Result<Option<Vec<Entry>>, FilesError> {
        match msg {
            Message::DirEntries(entries) => {
                if self.entries.len() + entries.len() > super::files::MAX_LISTED_ENTRIES {
                    return Err(FilesError::TooManyEntries);
                }
                self.entries.extend(entries);
                Ok(None)
            }
            Message::ListEnd => Ok(Some(std::mem::take(&mut self.entries))),
            other => Err(ClientError::Unexpected(other.kind()).into()),
        }
    }
}
