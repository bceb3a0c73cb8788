//! Protocol messages and their body encoding.
//!
//! Requests (host -> agent) have kinds below 0x80, responses (agent -> host)
//! have kinds from 0x80. Field encoding is described in `wire`.

use super::wire::{DecodeError, Decoder, Encoder};

/// Most argv entries an exec request may carry.
pub const MAX_ARGV: u32 = 4096;
/// Most environment variables an exec request may carry.
pub const MAX_ENV: u32 = 4096;
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
            0x81 => Self::Pong,
            0x82 => Self::Stdout,
            0x83 => Self::Stderr,
            0x84 => Self::Exit,
            0x85 => Self::Ok,
            0x86 => Self::Error,
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
    /// Whether `StdinChunk` frames and a final `StdinEnd` follow the
    /// request. Without it the program's stdin is `/dev/null`.
    pub stdin: bool,
    /// Kill the program's whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
}

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
}

/// Reply to [`Message::Ping`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pong {
    /// The agent's crate version.
    pub agent_version: String,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
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
            Self::Pong(_) => MessageKind::Pong,
            Self::Stdout(_) => MessageKind::Stdout,
            Self::Stderr(_) => MessageKind::Stderr,
            Self::Exit(_) => MessageKind::Exit,
            Self::Ok => MessageKind::Ok,
            Self::Error { .. } => MessageKind::Error,
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
        match self {
            Self::Ping | Self::StdinEnd | Self::Shutdown | Self::Ok => {}
            Self::Exec(req) => {
                e.len(req.argv.len());
                for arg in &req.argv {
                    e.str(arg);
                }
                e.len(req.env.len());
                for (k, v) in &req.env {
                    e.str(k).str(v);
                }
                e.opt_str(req.cwd.as_deref())
                    .bool(req.stdin)
                    .opt_u64(req.timeout_ms);
            }
            Self::StdinChunk(data) | Self::Stdout(data) | Self::Stderr(data) => {
                e.bytes(data);
            }
            Self::Pong(p) => {
                e.str(&p.agent_version).u64(p.uptime_ms);
            }
            Self::Exit(s) => {
                e.opt_i32(s.code)
                    .opt_i32(s.signal)
                    .bool(s.timed_out)
                    .u64(s.duration_ms);
            }
            Self::Error { code, message } => {
                e.u16(code.to_u16()).str(message);
            }
        }
        e.finish()
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
            MessageKind::Ok => Self::Ok,
            MessageKind::Exec => Self::Exec(decode_exec(&mut d)?),
            MessageKind::StdinChunk => Self::StdinChunk(d.bytes("stdin")?.to_vec()),
            MessageKind::Stdout => Self::Stdout(d.bytes("stdout")?.to_vec()),
            MessageKind::Stderr => Self::Stderr(d.bytes("stderr")?.to_vec()),
            MessageKind::Pong => Self::Pong(Pong {
                agent_version: d.string("agent_version")?,
                uptime_ms: d.u64("uptime_ms")?,
            }),
            MessageKind::Exit => Self::Exit(ExitStatus {
                code: d.opt_i32("code")?,
                signal: d.opt_i32("signal")?,
                timed_out: d.bool("timed_out")?,
                duration_ms: d.u64("duration_ms")?,
            }),
            MessageKind::Error => Self::Error {
                code: ErrorCode::from_u16(d.u16("code")?),
                message: d.string("message")?,
            },
        };
        d.finish()?;
        Ok(msg)
    }
}

fn decode_exec(d: &mut Decoder<'_>) -> Result<ExecRequest, DecodeError> {
    // Every string is at least its 4-byte length.
    let argc = d.count("argv", MAX_ARGV, 4)?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        argv.push(d.string("argv")?);
    }
    let envc = d.count("env", MAX_ENV, 8)?;
    let mut env = Vec::with_capacity(envc);
    for _ in 0..envc {
        env.push((d.string("env key")?, d.string("env value")?));
    }
    Ok(ExecRequest {
        argv,
        env,
        cwd: d.opt_string("cwd")?,
        stdin: d.bool("stdin")?,
        timeout_ms: d.opt_u64("timeout_ms")?,
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
            }),
            Message::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            }),
            Message::StdinChunk(binary()),
            Message::StdinChunk(Vec::new()),
            Message::StdinEnd,
            Message::Shutdown,
            Message::Pong(Pong {
                agent_version: "0.1.0".into(),
                uptime_ms: 12345,
            }),
            Message::Stdout(binary()),
            Message::Stderr(binary()),
            Message::Exit(ExitStatus {
                code: Some(-1),
                signal: None,
                timed_out: false,
                duration_ms: 7,
            }),
            Message::Exit(ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: true,
                duration_ms: u64::MAX,
            }),
            Message::Ok,
            Message::error(ErrorCode::SpawnFailed, "no such file"),
            Message::error(ErrorCode::Other(999), ""),
        ]
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
        for kind in [0x00u8, 0x06, 0x7f, 0x80, 0x87, 0xff] {
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
        for v in 0..10u16 {
            assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
        }
    }
}
