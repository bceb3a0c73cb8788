//! Protocol messages and their body encoding.
//!
//! Requests (host -> agent) have kinds below 0x80, responses (agent -> host)
//! have kinds from 0x80. Field encoding is described in `wire`.

use super::files::{
    decode_entries, encode_entries, Entry, FileDigest, FileRead, FileWrite, ListDir, Mkdir, Remove,
    Rename, Stat,
};
use super::process::{
    decode_processes, encode_processes, Attach, Gap, OutputChunk, ProcessInfo, Signal, StdinWrite,
    Wait,
};
use super::wire::{DecodeError, Decoder, Encoder};

/// Most argv entries an exec request may carry.
pub const MAX_ARGV: u32 = 4096;
/// Most environment variables an exec request may carry.
pub const MAX_ENV: u32 = 4096;
/// Most seed bytes a [`Message::Resume`] may carry.
pub const MAX_RESUME_SEED: usize = 512;

/// Longest `Error` message [`Message::error`] produces (bytes); longer
/// details are cut so an error reply always fits in a frame.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// The kind byte of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// [`Message::Ping`].
    Ping = 0x01,
    /// [`Message::Exec`].
    Exec = 0x02,
    /// [`Message::StdinChunk`].
    StdinChunk = 0x03,
    /// [`Message::StdinEnd`].
    StdinEnd = 0x04,
    /// [`Message::Shutdown`].
    Shutdown = 0x05,
    /// [`Message::Resume`].
    Resume = 0x06,
    /// [`Message::Pong`].
    Pong = 0x81,
    /// [`Message::Stdout`].
    Stdout = 0x82,
    /// [`Message::Stderr`].
    Stderr = 0x83,
    /// [`Message::Exit`].
    Exit = 0x84,
    /// [`Message::Ok`].
    Ok = 0x85,
    /// [`Message::Error`].
    Error = 0x86,
    /// [`Message::FileWrite`].
    FileWrite = 0x10,
    /// [`Message::FileRead`].
    FileRead = 0x11,
    /// [`Message::ListDir`].
    ListDir = 0x12,
    /// [`Message::Stat`].
    Stat = 0x13,
    /// [`Message::Remove`].
    Remove = 0x14,
    /// [`Message::Mkdir`].
    Mkdir = 0x15,
    /// [`Message::Rename`].
    Rename = 0x16,
    /// [`Message::FileChunk`] (both directions).
    FileChunk = 0x17,
    /// [`Message::FileEnd`] (both directions).
    FileEnd = 0x18,
    /// [`Message::FileWritten`].
    FileWritten = 0x90,
    /// [`Message::DirEntries`].
    DirEntries = 0x91,
    /// [`Message::ListEnd`].
    ListEnd = 0x92,
    /// [`Message::Entry`].
    Entry = 0x93,
    /// [`Message::Start`].
    Start = 0x20,
    /// [`Message::ListProcesses`].
    ListProcesses = 0x21,
    /// [`Message::Attach`].
    Attach = 0x22,
    /// [`Message::Wait`].
    Wait = 0x23,
    /// [`Message::WriteStdin`].
    WriteStdin = 0x24,
    /// [`Message::CloseStdin`].
    CloseStdin = 0x25,
    /// [`Message::Signal`].
    Signal = 0x26,
    /// [`Message::Collect`].
    Collect = 0x27,
    /// [`Message::Started`].
    Started = 0xA0,
    /// [`Message::Processes`].
    Processes = 0xA1,
    /// [`Message::Output`].
    Output = 0xA2,
    /// [`Message::Gap`].
    Gap = 0xA3,
    /// [`Message::CaughtUp`].
    CaughtUp = 0xA4,
    /// [`Message::Running`].
    Running = 0xA5,
    /// [`Message::StdinAck`].
    StdinAck = 0xA6,
}

impl TryFrom<u8> for MessageKind {
    type Error = DecodeError;

    fn try_from(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0x01 => Self::Ping,
            0x02 => Self::Exec,
            0x03 => Self::StdinChunk,
            0x04 => Self::StdinEnd,
            0x05 => Self::Shutdown,
            0x06 => Self::Resume,
            0x81 => Self::Pong,
            0x82 => Self::Stdout,
            0x83 => Self::Stderr,
            0x84 => Self::Exit,
            0x85 => Self::Ok,
            0x86 => Self::Error,
            0x10 => Self::FileWrite,
            0x11 => Self::FileRead,
            0x12 => Self::ListDir,
            0x13 => Self::Stat,
            0x14 => Self::Remove,
            0x15 => Self::Mkdir,
            0x16 => Self::Rename,
            0x17 => Self::FileChunk,
            0x18 => Self::FileEnd,
            0x90 => Self::FileWritten,
            0x91 => Self::DirEntries,
            0x92 => Self::ListEnd,
            0x93 => Self::Entry,
            0x20 => Self::Start,
            0x21 => Self::ListProcesses,
            0x22 => Self::Attach,
            0x23 => Self::Wait,
            0x24 => Self::WriteStdin,
            0x25 => Self::CloseStdin,
            0x26 => Self::Signal,
            0x27 => Self::Collect,
            0xA0 => Self::Started,
            0xA1 => Self::Processes,
            0xA2 => Self::Output,
            0xA3 => Self::Gap,
            0xA4 => Self::CaughtUp,
            0xA5 => Self::Running,
            0xA6 => Self::StdinAck,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Run a program in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH`. Not empty.
    pub argv: Vec<String>,
    /// The complete environment (the agent's own is not inherited). A
    /// default `PATH` is added when none is given.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` keeps the agent's (`/` in the guest).
    pub cwd: Option<String>,
    /// `Exec`: whether `StdinChunk` frames and a final `StdinEnd` follow
    /// the request. `Start`: whether stdin stays open for `WriteStdin`
    /// until `CloseStdin`. Without it the program's stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the program's whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Most stdout + stderr bytes sent back; `None` means
    /// [`DEFAULT_MAX_OUTPUT_BYTES`]. Output beyond it is read and dropped
    /// (the program keeps running) and the exit says `truncated`.
    pub max_output_bytes: Option<u64>,
}

/// Output cap of an exec whose request sets no `max_output_bytes` (16 MiB).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// How an exec'd program ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when the program exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when the program was killed by one.
    pub signal: Option<i32>,
    /// The agent killed the program because its timeout elapsed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, measured in the agent.
    pub duration_ms: u64,
    /// Output went over the request's `max_output_bytes`; the rest was
    /// dropped.
    pub truncated: bool,
    /// The kernel's OOM killer killed a process of this exec.
    pub oom_killed: bool,
}

/// What a VM restored from a snapshot learns from its host before it
/// serves anything: clones of one snapshot start with the same RNG state
/// and a wall clock stopped at the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Fresh random bytes for the kernel RNG (at most [`MAX_RESUME_SEED`]).
    pub seed: Vec<u8>,
    /// The host's wall-clock time, nanoseconds since the Unix epoch.
    pub unix_time_ns: u64,
}

/// Reply to [`Message::Ping`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pong {
    /// The agent's crate version.
    pub agent_version: String,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// Where programs run: the sandbox root and its setup, or why setting
    /// it up failed (human-readable, for diagnostics).
    pub sandbox: String,
}

/// Machine-readable class of an [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be parsed (magic, version, length, truncation).
    BadFrame,
    /// The frame was well formed but its message is invalid or unexpected.
    BadRequest,
    /// The program could not be started.
    SpawnFailed,
    /// The agent has too many connections open.
    Busy,
    /// Something failed inside the agent.
    Internal,
    /// Files: no such file or directory (`ENOENT`).
    NotFound,
    /// Files: the sandbox user may not do this (`EACCES`, `EPERM`).
    PermissionDenied,
    /// Files: the sandbox's disk is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// Files: the path exists (`EEXIST`, or a write without `overwrite`).
    Exists,
    /// Files: a path component is not a directory (`ENOTDIR`).
    NotADirectory,
    /// Files: the path is a directory (`EISDIR`).
    IsADirectory,
    /// Files: the directory is not empty (`ENOTEMPTY`).
    NotEmpty,
    /// Files: the file system is read-only (`EROFS`).
    ReadOnly,
    /// Files: the uploaded bytes do not match the size/SHA-256 the host
    /// announced in `FileEnd`.
    Mismatch,
    /// Files: another I/O error (`EIO`, ...); the message has the details.
    Io,
    /// Processes: no process with this id (never started, or collected).
    NoSuchProcess,
    /// Processes: the live-process limit is reached.
    TooManyProcesses,
    /// Processes: a stdin write starts beyond the bytes accepted so far;
    /// the message says where the next write must start.
    StdinGap,
    /// Processes: the process's stdin is closed (or was never open).
    StdinClosed,
    /// Processes: the process has already exited.
    NotRunning,
    /// Processes: the process is still running (it cannot be collected).
    StillRunning,
    /// A code this side does not know (from a newer peer).
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::BadFrame => 1,
            Self::BadRequest => 2,
            Self::SpawnFailed => 3,
            Self::Busy => 4,
            Self::Internal => 5,
            Self::NotFound => 16,
            Self::PermissionDenied => 17,
            Self::NoSpace => 18,
            Self::Exists => 19,
            Self::NotADirectory => 20,
            Self::IsADirectory => 21,
            Self::NotEmpty => 22,
            Self::ReadOnly => 23,
            Self::Mismatch => 24,
            Self::Io => 25,
            Self::NoSuchProcess => 32,
            Self::TooManyProcesses => 33,
            Self::StdinGap => 34,
            Self::StdinClosed => 35,
            Self::NotRunning => 36,
            Self::StillRunning => 37,
            Self::Other(v) => v,
        }
    }

    /// Parses a wire value; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::BadRequest,
            3 => Self::SpawnFailed,
            4 => Self::Busy,
            5 => Self::Internal,
            16 => Self::NotFound,
            17 => Self::PermissionDenied,
            18 => Self::NoSpace,
            19 => Self::Exists,
            20 => Self::NotADirectory,
            21 => Self::IsADirectory,
            22 => Self::NotEmpty,
            23 => Self::ReadOnly,
            24 => Self::Mismatch,
            25 => Self::Io,
            32 => Self::NoSuchProcess,
            33 => Self::TooManyProcesses,
            34 => Self::StdinGap,
            35 => Self::StdinClosed,
            36 => Self::NotRunning,
            37 => Self::StillRunning,
            v => Self::Other(v),
        }
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Host -> agent: liveness check, answered with [`Message::Pong`].
    Ping,
    /// Host -> agent: run a program; answered with a stream of
    /// [`Message::Stdout`] / [`Message::Stderr`] and a final
    /// [`Message::Exit`] (or [`Message::Error`]).
    Exec(ExecRequest),
    /// Host -> agent: bytes for the program's stdin.
    StdinChunk(Vec<u8>),
    /// Host -> agent: end of stdin (the agent closes the pipe).
    StdinEnd,
    /// Host -> agent: answered with [`Message::Ok`], then the VM powers off.
    Shutdown,
    /// Host -> agent, after a restore: reseed the kernel RNG and set the
    /// clock; answered with [`Message::Ok`].
    Resume(Resume),
    /// Agent -> host: reply to ping.
    Pong(Pong),
    /// Agent -> host: bytes the program wrote to stdout.
    Stdout(Vec<u8>),
    /// Agent -> host: bytes the program wrote to stderr.
    Stderr(Vec<u8>),
    /// Agent -> host: the program ended; last frame of an exec.
    Exit(ExitStatus),
    /// Agent -> host: request accepted (shutdown).
    Ok,
    /// Agent -> host: the request failed; last frame on the connection.
    Error {
        /// Class of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Host -> agent: write a file atomically; `FileChunk`* and `FileEnd`
    /// follow, answered with [`Message::FileWritten`].
    FileWrite(FileWrite),
    /// Host -> agent: read a file, answered with `FileChunk`* and
    /// `FileEnd`.
    FileRead(FileRead),
    /// Host -> agent: list a directory, answered with
    /// [`Message::DirEntries`]* and [`Message::ListEnd`].
    ListDir(ListDir),
    /// Host -> agent: describe a path, answered with [`Message::Entry`].
    Stat(Stat),
    /// Host -> agent: remove a path, answered with [`Message::Ok`].
    Remove(Remove),
    /// Host -> agent: make a directory, answered with [`Message::Ok`].
    Mkdir(Mkdir),
    /// Host -> agent: move a path, answered with [`Message::Ok`].
    Rename(Rename),
    /// Both ways: up to [`super::MAX_CHUNK`] bytes of a file.
    FileChunk(Vec<u8>),
    /// Both ways: end of a file's contents, with their size and SHA-256.
    FileEnd(FileDigest),
    /// Agent -> host: the upload is in place.
    FileWritten(FileDigest),
    /// Agent -> host: some entries of a listed directory.
    DirEntries(Vec<Entry>),
    /// Agent -> host: the listing is complete.
    ListEnd,
    /// Agent -> host: reply to [`Message::Stat`].
    Entry(Entry),
    /// Host -> agent: start a program in the process table, answered with
    /// [`Message::Started`] at once. It outlives the connection.
    Start(ExecRequest),
    /// Host -> agent: list the process table, answered with
    /// [`Message::Processes`].
    ListProcesses,
    /// Host -> agent: stream a process's output: [`Message::Gap`]?, then
    /// [`Message::Output`]*, then [`Message::Exit`] or
    /// [`Message::CaughtUp`].
    Attach(Attach),
    /// Host -> agent: wait for a process, answered with [`Message::Exit`]
    /// or [`Message::Running`].
    Wait(Wait),
    /// Host -> agent: offset-tagged stdin bytes, answered with
    /// [`Message::StdinAck`].
    WriteStdin(StdinWrite),
    /// Host -> agent: close a process's stdin, answered with
    /// [`Message::Ok`].
    CloseStdin(u64),
    /// Host -> agent: signal a process's group, answered with
    /// [`Message::Ok`].
    Signal(Signal),
    /// Host -> agent: forget an exited process, answered with its
    /// [`Message::Exit`].
    Collect(u64),
    /// Agent -> host: the id of a started process.
    Started(u64),
    /// Agent -> host: the process table.
    Processes(Vec<ProcessInfo>),
    /// Agent -> host: a chunk of a process's output, with its sequence
    /// number.
    Output(OutputChunk),
    /// Agent -> host: chunks the client asked for were evicted.
    Gap(Gap),
    /// Agent -> host: everything buffered was sent (attach without
    /// follow); carries the last sequence number sent or skipped.
    CaughtUp(u64),
    /// Agent -> host: the wait timed out; the process still runs.
    Running,
    /// Agent -> host: stdin bytes accepted so far (the offset the next
    /// write starts at).
    StdinAck(u64),
}

impl Message {
    /// The kind byte that goes in the frame header.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Ping => MessageKind::Ping,
            Self::Exec(_) => MessageKind::Exec,
            Self::StdinChunk(_) => MessageKind::StdinChunk,
            Self::StdinEnd => MessageKind::StdinEnd,
            Self::Shutdown => MessageKind::Shutdown,
            Self::Resume(_) => MessageKind::Resume,
            Self::Pong(_) => MessageKind::Pong,
            Self::Stdout(_) => MessageKind::Stdout,
            Self::Stderr(_) => MessageKind::Stderr,
            Self::Exit(_) => MessageKind::Exit,
            Self::Ok => MessageKind::Ok,
            Self::Error { .. } => MessageKind::Error,
            Self::FileWrite(_) => MessageKind::FileWrite,
            Self::FileRead(_) => MessageKind::FileRead,
            Self::ListDir(_) => MessageKind::ListDir,
            Self::Stat(_) => MessageKind::Stat,
            Self::Remove(_) => MessageKind::Remove,
            Self::Mkdir(_) => MessageKind::Mkdir,
            Self::Rename(_) => MessageKind::Rename,
            Self::FileChunk(_) => MessageKind::FileChunk,
            Self::FileEnd(_) => MessageKind::FileEnd,
            Self::FileWritten(_) => MessageKind::FileWritten,
            Self::DirEntries(_) => MessageKind::DirEntries,
            Self::ListEnd => MessageKind::ListEnd,
            Self::Entry(_) => MessageKind::Entry,
            Self::Start(_) => MessageKind::Start,
            Self::ListProcesses => MessageKind::ListProcesses,
            Self::Attach(_) => MessageKind::Attach,
            Self::Wait(_) => MessageKind::Wait,
            Self::WriteStdin(_) => MessageKind::WriteStdin,
            Self::CloseStdin(_) => MessageKind::CloseStdin,
            Self::Signal(_) => MessageKind::Signal,
            Self::Collect(_) => MessageKind::Collect,
            Self::Started(_) => MessageKind::Started,
            Self::Processes(_) => MessageKind::Processes,
            Self::Output(_) => MessageKind::Output,
            Self::Gap(_) => MessageKind::Gap,
            Self::CaughtUp(_) => MessageKind::CaughtUp,
            Self::Running => MessageKind::Running,
            Self::StdinAck(_) => MessageKind::StdinAck,
        }
    }

    /// Shorthand for an error reply; the message is cut to
    /// [`MAX_ERROR_MESSAGE`] bytes (at a character boundary).
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self::Error { code, message }
    }

    /// Encodes the message body (the frame payload).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        self.encode_into(&mut e);
        e.finish()
    }

    /// Appends the message body to `e`.
    pub(crate) fn encode_into(&self, e: &mut Encoder) {
        match self {
            Self::Ping | Self::StdinEnd | Self::Shutdown | Self::Ok => {}
            Self::ListProcesses | Self::Running => {}
            Self::Exec(req) | Self::Start(req) => encode_exec(req, e),
            Self::StdinChunk(data) | Self::Stdout(data) | Self::Stderr(data) => {
                e.bytes(data);
            }
            Self::Resume(r) => {
                e.bytes(&r.seed).u64(r.unix_time_ns);
            }
            Self::Pong(p) => {
                e.str(&p.agent_version).u64(p.uptime_ms).str(&p.sandbox);
            }
            Self::Exit(s) => encode_exit(s, e),
            Self::Error { code, message } => {
                e.u16(code.to_u16()).str(message);
            }
            Self::ListEnd => {}
            Self::FileWrite(r) => r.encode(e),
            Self::FileRead(r) => r.encode(e),
            Self::ListDir(r) => r.encode(e),
            Self::Stat(r) => r.encode(e),
            Self::Remove(r) => r.encode(e),
            Self::Mkdir(r) => r.encode(e),
            Self::Rename(r) => r.encode(e),
            Self::FileChunk(data) => {
                e.bytes(data);
            }
            Self::FileEnd(d) | Self::FileWritten(d) => d.encode(e),
            Self::DirEntries(entries) => encode_entries(entries, e),
            Self::Entry(entry) => entry.encode(e),
            Self::Attach(r) => r.encode(e),
            Self::Wait(r) => r.encode(e),
            Self::WriteStdin(r) => r.encode(e),
            Self::Signal(r) => r.encode(e),
            Self::CloseStdin(id)
            | Self::Collect(id)
            | Self::Started(id)
            | Self::CaughtUp(id)
            | Self::StdinAck(id) => {
                e.u64(*id);
            }
            Self::Processes(list) => encode_processes(list, e),
            Self::Output(chunk) => chunk.encode(e),
            Self::Gap(gap) => gap.encode(e),
        }
    }

    /// Decodes a message from its frame kind and body. Every byte of the
    /// body must be used.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let kind = MessageKind::try_from(kind)?;
        let mut d = Decoder::new(body);
        let msg = match kind {
            MessageKind::Ping => Self::Ping,
            MessageKind::StdinEnd => Self::StdinEnd,
            MessageKind::Shutdown => Self::Shutdown,
            MessageKind::Resume => {
                let seed = d.bytes("seed")?;
                if seed.len() > MAX_RESUME_SEED {
                    return Err(DecodeError::TooMany {
                        field: "seed",
                        count: u32::try_from(seed.len()).unwrap_or(u32::MAX),
                        max: MAX_RESUME_SEED as u32,
                    });
                }
                Self::Resume(Resume {
                    seed: seed.to_vec(),
                    unix_time_ns: d.u64("unix_time_ns")?,
                })
            }
            MessageKind::Ok => Self::Ok,
            MessageKind::Exec => Self::Exec(decode_exec(&mut d)?),
            MessageKind::StdinChunk => Self::StdinChunk(d.bytes("stdin")?.to_vec()),
            MessageKind::Stdout => Self::Stdout(d.bytes("stdout")?.to_vec()),
            MessageKind::Stderr => Self::Stderr(d.bytes("stderr")?.to_vec()),
            MessageKind::Pong => Self::Pong(Pong {
                agent_version: d.string("agent_version")?,
                uptime_ms: d.u64("uptime_ms")?,
                sandbox: d.string("sandbox")?,
            }),
            MessageKind::Exit => Self::Exit(decode_exit(&mut d)?),
            MessageKind::Error => Self::Error {
                code: ErrorCode::from_u16(d.u16("code")?),
                message: d.string("message")?,
            },
            MessageKind::FileWrite => Self::FileWrite(FileWrite::decode(&mut d)?),
            MessageKind::FileRead => Self::FileRead(FileRead::decode(&mut d)?),
            MessageKind::ListDir => Self::ListDir(ListDir::decode(&mut d)?),
            MessageKind::Stat => Self::Stat(Stat::decode(&mut d)?),
            MessageKind::Remove => Self::Remove(Remove::decode(&mut d)?),
            MessageKind::Mkdir => Self::Mkdir(Mkdir::decode(&mut d)?),
            MessageKind::Rename => Self::Rename(Rename::decode(&mut d)?),
            MessageKind::FileChunk => Self::FileChunk(d.bytes("chunk")?.to_vec()),
            MessageKind::FileEnd => Self::FileEnd(FileDigest::decode(&mut d)?),
            MessageKind::FileWritten => Self::FileWritten(FileDigest::decode(&mut d)?),
            MessageKind::DirEntries => Self::DirEntries(decode_entries(&mut d)?),
            MessageKind::ListEnd => Self::ListEnd,
            MessageKind::Entry => Self::Entry(Entry::decode(&mut d)?),
            MessageKind::Start => Self::Start(decode_exec(&mut d)?),
            MessageKind::ListProcesses => Self::ListProcesses,
            MessageKind::Attach => Self::Attach(Attach::decode(&mut d)?),
            MessageKind::Wait => Self::Wait(Wait::decode(&mut d)?),
            MessageKind::WriteStdin => Self::WriteStdin(StdinWrite::decode(&mut d)?),
            MessageKind::CloseStdin => Self::CloseStdin(d.u64("id")?),
            MessageKind::Signal => Self::Signal(Signal::decode(&mut d)?),
            MessageKind::Collect => Self::Collect(d.u64("id")?),
            MessageKind::Started => Self::Started(d.u64("id")?),
            MessageKind::Processes => Self::Processes(decode_processes(&mut d)?),
            MessageKind::Output => Self::Output(OutputChunk::decode(&mut d)?),
            MessageKind::Gap => Self::Gap(Gap::decode(&mut d)?),
            MessageKind::CaughtUp => Self::CaughtUp(d.u64("last_seq")?),
            MessageKind::Running => Self::Running,
            MessageKind::StdinAck => Self::StdinAck(d.u64("accepted")?),
        };
        d.finish()?;
        Ok(msg)
    }
}

fn encode_exec(req: &ExecRequest, e: &mut Encoder) {
    e.list(&req.argv, |e, arg| {
        e.str(arg);
    });
    e.list(&req.env, |e, (k, v)| {
        e.str(k).str(v);
    });
    e.opt_str(req.cwd.as_deref())
        .bool(req.stdin)
        .opt_u64(req.timeout_ms)
        .opt_u64(req.max_output_bytes);
}

pub(crate) fn encode_exit(s: &ExitStatus, e: &mut Encoder) {
    e.opt_i32(s.code)
        .opt_i32(s.signal)
        .bool(s.timed_out)
        .u64(s.duration_ms)
        .bool(s.truncated)
        .bool(s.oom_killed);
}

pub(crate) fn decode_exit(d: &mut Decoder<'_>) -> Result<ExitStatus, DecodeError> {
    Ok(ExitStatus {
        code: d.opt_i32("code")?,
        signal: d.opt_i32("signal")?,
        timed_out: d.bool("timed_out")?,
        duration_ms: d.u64("duration_ms")?,
        truncated: d.bool("truncated")?,
        oom_killed: d.bool("oom_killed")?,
    })
}

fn decode_exec(d: &mut Decoder<'_>) -> Result<ExecRequest, DecodeError> {
    // Every string is at least its 4-byte length.
    let argv = d.list("argv", MAX_ARGV, 4, |d| d.string("argv"))?;
    let env = d.list("env", MAX_ENV, 8, |d| {
        Ok((d.string("env key")?, d.string("env value")?))
    })?;
    Ok(ExecRequest {
        argv,
        env,
        cwd: d.opt_string("cwd")?,
        stdin: d.bool("stdin")?,
        timeout_ms: d.opt_u64("timeout_ms")?,
        max_output_bytes: d.opt_u64("max_output_bytes")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary() -> Vec<u8> {
        (0..=255u8).chain([0, 0, 0xff, b'\n', b'\r']).collect()
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Ping,
            Message::Exec(ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo 'ü'; exit 3".into(),
                    String::new(),
                ],
                env: vec![("A".into(), "1".into()), ("EMPTY".into(), String::new())],
                cwd: Some("/tmp".into()),
                stdin: true,
                timeout_ms: Some(500),
                max_output_bytes: Some(1_000_000),
            }),
            Message::Exec(ExecRequest {
                argv: vec!["x".into()],
                max_output_bytes: Some(u64::MAX),
                ..ExecRequest::default()
            }),
            Message::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            }),
            Message::StdinChunk(binary()),
            Message::StdinChunk(Vec::new()),
            Message::StdinEnd,
            Message::Shutdown,
            Message::Resume(Resume {
                seed: binary(),
                unix_time_ns: 1_700_000_000_000_000_000,
            }),
            Message::Pong(Pong {
                agent_version: "0.1.0".into(),
                uptime_ms: 12345,
                sandbox: "overlay on /run/kiln/root".into(),
            }),
            Message::Stdout(binary()),
            Message::Stderr(binary()),
            Message::Exit(ExitStatus {
                code: Some(-1),
                signal: None,
                timed_out: false,
                duration_ms: 7,
                truncated: true,
                oom_killed: false,
            }),
            Message::Exit(ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: true,
                duration_ms: u64::MAX,
                truncated: false,
                oom_killed: true,
            }),
            Message::Ok,
            Message::error(ErrorCode::SpawnFailed, "no such file"),
            Message::error(ErrorCode::Other(999), ""),
        ]
    }

    #[test]
    fn resume_seed_is_bounded() {
        let msg = Message::Resume(Resume {
            seed: vec![7; MAX_RESUME_SEED + 1],
            unix_time_ns: 1,
        });
        assert!(matches!(
            Message::decode(MessageKind::Resume as u8, &msg.encode_body()),
            Err(DecodeError::TooMany { field: "seed", .. })
        ));
    }

    #[test]
    fn every_message_round_trips() {
        for msg in all_messages() {
            let body = msg.encode_body();
            let back = Message::decode(msg.kind() as u8, &body).expect("decode");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn every_strict_prefix_of_a_body_is_rejected() {
        for msg in all_messages() {
            let body = msg.encode_body();
            for n in 0..body.len() {
                let res = Message::decode(msg.kind() as u8, &body[..n]);
                assert!(res.is_err(), "{msg:?} prefix {n} decoded as {res:?}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for msg in all_messages() {
            let mut body = msg.encode_body();
            body.push(0);
            assert!(matches!(
                Message::decode(msg.kind() as u8, &body),
                Err(DecodeError::TrailingBytes(1))
            ));
        }
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        for kind in [0x00u8, 0x07, 0x28, 0x7f, 0x80, 0x87, 0xA7, 0xff] {
            assert_eq!(
                Message::decode(kind, &[]),
                Err(DecodeError::UnknownKind(kind))
            );
        }
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        // argc = MAX_ARGV with no strings following: rejected by the
        // bytes-left check before any Vec::with_capacity.
        let mut body = MAX_ARGV.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 8]);
        assert!(matches!(
            Message::decode(MessageKind::Exec as u8, &body),
            Err(DecodeError::Truncated("argv"))
        ));
        let body = (MAX_ARGV + 1).to_le_bytes();
        assert!(matches!(
            Message::decode(MessageKind::Exec as u8, &body),
            Err(DecodeError::TooMany { field: "argv", .. })
        ));
    }

    #[test]
    fn garbage_bodies_never_panic() {
        // Deterministic pseudo-random garbage for every kind.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for kind in 0..=255u8 {
            for len in [0usize, 1, 3, 8, 17, 64, 300] {
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = Message::decode(kind, &body);
            }
        }
    }

    #[test]
    fn error_messages_are_bounded() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let Message::Error { message, .. } = Message::error(ErrorCode::Internal, long) else {
            panic!("not an error");
        };
        assert!(message.len() <= MAX_ERROR_MESSAGE);
        assert!(message.len() >= MAX_ERROR_MESSAGE - 1);
        assert!(message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn error_codes_round_trip() {
        for v in 0..64u16 {
            assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
        }
    }
}
