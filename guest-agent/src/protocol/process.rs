//! Bodies of the process messages: programs that live in the agent's
//! process table, independent of any connection.
//!
//! - `Start{ExecRequest}` -> `Started{id}` (before the program says anything);
//! - `ListProcesses` -> `Processes([ProcessInfo])`;
//! - `Attach{id, after_seq, follow}` -> `Gap`? then `Output`*, then `Exit`
//!   (the process ended and everything buffered was sent) or `CaughtUp`
//!   (without `follow`, while it runs);
//! - `Wait{id, timeout_ms}` -> `Exit` or `Running` (the timeout passed);
//! - `WriteStdin{id, offset, data}` -> `StdinAck{accepted}`;
//! - `CloseStdin{id}`, `Signal{id, signal}` -> `Ok`;
//! - `Collect{id}` -> `Exit` (and the agent forgets the process);
//!
//! and any of them -> `Error{code, message}` instead.
//!
//! Output of a process is one sequence of chunks across stdout and stderr,
//! numbered from 1. The agent keeps the newest ones in a bounded ring; a
//! client that asks for chunks that were already evicted gets a `Gap`
//! naming the evicted range first.

use super::message::{decode_exit, encode_exit, ExitStatus, MAX_ARGV};
use super::wire::{DecodeError, Decoder, Encoder};

/// Longest `Wait` the agent honours (one hour); longer timeouts are cut.
pub const MAX_WAIT_MS: u64 = 60 * 60 * 1000;
/// Most bytes of argv a [`ProcessInfo`] carries; later arguments are left
/// out, so a listing of every process always fits in one frame.
pub const MAX_LISTED_ARGV_BYTES: usize = 4096;
/// Most processes one `Processes` frame may carry.
pub const MAX_LISTED_PROCESSES: u32 = 128;

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputStream {
    /// The program's stdout.
    #[default]
    Stdout,
    /// The program's stderr.
    Stderr,
}

impl OutputStream {
    fn to_u8(self) -> u8 {
        match self {
            Self::Stdout => 1,
            Self::Stderr => 2,
        }
    }

    fn from_u8(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Stdout),
            2 => Ok(Self::Stderr),
            tag => Err(DecodeError::InvalidTag {
                field: "stream",
                tag,
            }),
        }
    }
}

/// Host -> agent: stream a process's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attach {
    /// The process.
    pub id: u64,
    /// Send chunks with a sequence number above this (0: from the start).
    pub after_seq: u64,
    /// Keep streaming until the process exits; without it the reply ends
    /// with `CaughtUp` once everything buffered was sent.
    pub follow: bool,
}

/// Host -> agent: wait for a process to exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wait {
    /// The process.
    pub id: u64,
    /// Give up (reply `Running`) after this long; at most [`MAX_WAIT_MS`].
    pub timeout_ms: u64,
}

/// Host -> agent: bytes for a process's stdin, tagged with their offset in
/// the stdin stream so a retry is recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdinWrite {
    /// The process.
    pub id: u64,
    /// Offset of `data[0]` in the process's stdin stream. Bytes the agent
    /// already accepted are acknowledged and skipped; an offset beyond
    /// what it accepted (a gap) is refused.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Host -> agent: signal a process's whole process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signal {
    /// The process.
    pub id: u64,
    /// Signal number (1..=64); `SIGKILL` also kills everything left in the
    /// process's cgroup.
    pub signal: i32,
}

/// Agent -> host: one chunk of a process's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputChunk {
    /// Position in the process's output sequence (from 1).
    pub seq: u64,
    /// stdout or stderr.
    pub stream: OutputStream,
    /// At most [`super::MAX_CHUNK`] bytes.
    pub data: Vec<u8>,
}

/// Agent -> host: chunks `first_seq..=last_seq` were evicted from the ring
/// before this client asked for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gap {
    /// First evicted chunk the client missed.
    pub first_seq: u64,
    /// Last evicted chunk the client missed.
    pub last_seq: u64,
}

/// Agent -> host: one entry of a process listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id (the agent's, not the kernel's pid).
    pub id: u64,
    /// Program and arguments, cut to [`MAX_LISTED_ARGV_BYTES`].
    pub argv: Vec<String>,
    /// `None` while it runs; how it ended once it has.
    pub exit: Option<ExitStatus>,
    /// When it started, milliseconds since the Unix epoch (guest clock).
    pub started_unix_ms: u64,
    /// Oldest chunk still buffered (`last_seq + 1` when none is).
    pub first_seq: u64,
    /// Newest chunk produced so far (0: none yet).
    pub last_seq: u64,
    /// Whether its stdin still takes `WriteStdin`.
    pub stdin_open: bool,
}

/// Smallest encoded [`ProcessInfo`]: id, argv count, exit tag, start,
/// two seqs, stdin flag.
const MIN_PROCESS_INFO_LEN: usize = 8 + 4 + 1 + 8 + 8 + 8 + 1;

impl Attach {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id).u64(self.after_seq).bool(self.follow);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: d.u64("id")?,
            after_seq: d.u64("after_seq")?,
            follow: d.bool("follow")?,
        })
    }
}

impl Wait {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id).u64(self.timeout_ms);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: d.u64("id")?,
            timeout_ms: d.u64("timeout_ms")?,
        })
    }
}

impl StdinWrite {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id).u64(self.offset).bytes(&self.data);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: d.u64("id")?,
            offset: d.u64("offset")?,
            data: d.bytes("data")?.to_vec(),
        })
    }
}

impl Signal {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id).i32(self.signal);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: d.u64("id")?,
            signal: d.i32("signal")?,
        })
    }
}

impl OutputChunk {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.seq).u8(self.stream.to_u8()).bytes(&self.data);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            seq: d.u64("seq")?,
            stream: OutputStream::from_u8(d.u8("stream")?)?,
            data: d.bytes("data")?.to_vec(),
        })
    }
}

impl Gap {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.first_seq).u64(self.last_seq);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            first_seq: d.u64("first_seq")?,
            last_seq: d.u64("last_seq")?,
        })
    }
}

impl ProcessInfo {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.id).list(&self.argv, |e, arg| {
            e.str(arg);
        });
        match &self.exit {
            None => {
                e.u8(0);
            }
            Some(status) => {
                e.u8(1);
                encode_exit(status, e);
            }
        }
        e.u64(self.started_unix_ms)
            .u64(self.first_seq)
            .u64(self.last_seq)
            .bool(self.stdin_open);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let id = d.u64("id")?;
        // Every string is at least its 4-byte length.
        let argv = d.list("argv", MAX_ARGV, 4, |d| d.string("argv"))?;
        let exit = if d.bool("exit")? {
            Some(decode_exit(d)?)
        } else {
            None
        };
        Ok(Self {
            id,
            argv,
            exit,
            started_unix_ms: d.u64("started_unix_ms")?,
            first_seq: d.u64("first_seq")?,
            last_seq: d.u64("last_seq")?,
            stdin_open: d.bool("stdin_open")?,
        })
    }
}

/// `argv` cut to at most `max` encoded bytes (each argument costs its
/// length plus its 4-byte prefix): whole arguments while they fit, then a
/// prefix of the next one (at a character boundary).
pub fn cut_argv(argv: &[String], max: usize) -> Vec<String> {
    let mut left = max;
    let mut out = Vec::new();
    for arg in argv {
        let Some(room) = left.checked_sub(4) else {
            break;
        };
        if arg.len() <= room {
            left = room - arg.len();
            out.push(arg.clone());
            continue;
        }
        let mut end = room;
        while !arg.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            out.push(arg[..end].to_owned());
        }
        break;
    }
    out
}

pub(crate) fn encode_processes(list: &[ProcessInfo], e: &mut Encoder) {
    e.list(list, |e, info| info.encode(e));
}

pub(crate) fn decode_processes(d: &mut Decoder<'_>) -> Result<Vec<ProcessInfo>, DecodeError> {
    d.list(
        "processes",
        MAX_LISTED_PROCESSES,
        MIN_PROCESS_INFO_LEN,
        ProcessInfo::decode,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ExecRequest, Message, MAX_FRAME_PAYLOAD};

    fn info(id: u64, exit: Option<ExitStatus>) -> ProcessInfo {
        ProcessInfo {
            id,
            argv: vec!["sh".into(), "-c".into(), "sleep 1; echo ü".into()],
            exit,
            started_unix_ms: 1_700_000_000_000,
            first_seq: 3,
            last_seq: u64::MAX,
            stdin_open: true,
        }
    }

    fn process_messages() -> Vec<Message> {
        vec![
            Message::Start(ExecRequest {
                argv: vec!["cat".into()],
                stdin: true,
                timeout_ms: Some(5),
                ..ExecRequest::default()
            }),
            Message::Started(u64::MAX),
            Message::ListProcesses,
            Message::Processes(vec![
                info(1, None),
                info(
                    2,
                    Some(ExitStatus {
                        code: Some(1),
                        ..ExitStatus::default()
                    }),
                ),
            ]),
            Message::Processes(Vec::new()),
            Message::Attach(Attach {
                id: 7,
                after_seq: 99,
                follow: true,
            }),
            Message::Output(OutputChunk {
                seq: 1,
                stream: OutputStream::Stderr,
                data: (0..=255u8).collect(),
            }),
            Message::Output(OutputChunk::default()),
            Message::Gap(Gap {
                first_seq: 1,
                last_seq: 10,
            }),
            Message::CaughtUp(42),
            Message::Wait(Wait {
                id: 1,
                timeout_ms: 0,
            }),
            Message::Running,
            Message::WriteStdin(StdinWrite {
                id: 3,
                offset: 1 << 40,
                data: b"abc".to_vec(),
            }),
            Message::StdinAck(17),
            Message::CloseStdin(3),
            Message::Signal(Signal { id: 3, signal: -1 }),
            Message::Collect(9),
        ]
    }

    #[test]
    fn process_messages_round_trip_and_reject_prefixes() {
        for msg in process_messages() {
            let body = msg.encode_body();
            let back = Message::decode(msg.kind() as u8, &body).expect("decode");
            assert_eq!(back, msg);
            for n in 0..body.len() {
                let res = Message::decode(msg.kind() as u8, &body[..n]);
                assert!(res.is_err(), "{msg:?} prefix {n} decoded as {res:?}");
            }
            let mut padded = body;
            padded.push(0);
            assert_eq!(
                Message::decode(msg.kind() as u8, &padded),
                Err(DecodeError::TrailingBytes(1))
            );
        }
    }

    #[test]
    fn bad_stream_tags_and_counts_are_rejected() {
        let mut e = Encoder::new();
        e.u64(1).u8(3).bytes(b"x");
        assert_eq!(
            Message::decode(crate::protocol::MessageKind::Output as u8, &e.finish()),
            Err(DecodeError::InvalidTag {
                field: "stream",
                tag: 3
            })
        );
        let body = (MAX_LISTED_PROCESSES + 1).to_le_bytes();
        assert!(matches!(
            Message::decode(crate::protocol::MessageKind::Processes as u8, &body),
            Err(DecodeError::TooMany { .. })
        ));
    }

    #[test]
    fn argv_is_cut_at_the_byte_budget() {
        let argv: Vec<String> = vec!["abc".into(), "déf".into(), "ghi".into()];
        assert_eq!(cut_argv(&argv, 100), argv);
        assert_eq!(cut_argv(&argv, 7), ["abc"]);
        // 2 bytes left for "déf": a cut inside 'é' backs off to "d".
        assert_eq!(cut_argv(&argv, 13), ["abc", "d"]);
        assert_eq!(cut_argv(&argv, 15), ["abc", "déf"]);
        assert!(cut_argv(&argv, 4).is_empty());
        assert!(cut_argv(&argv, 0).is_empty());
        let many = vec![String::new(); 10_000];
        assert_eq!(cut_argv(&many, 4096).len(), 1024, "prefixes count");
    }

    #[test]
    fn a_full_listing_fits_a_frame() {
        let huge = vec!["x".repeat(MAX_LISTED_ARGV_BYTES); 4];
        let one = ProcessInfo {
            argv: cut_argv(&huge, MAX_LISTED_ARGV_BYTES),
            exit: Some(ExitStatus::default()),
            ..info(1, None)
        };
        let list = vec![one; MAX_LISTED_PROCESSES as usize];
        let body = Message::Processes(list).encode_body();
        assert!(body.len() <= MAX_FRAME_PAYLOAD as usize, "{}", body.len());
    }
}
