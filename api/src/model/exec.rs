//! Execs: a program run in a sandbox, its events and its result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorDetail;

/// `POST /v1/sandboxes/{id}/execs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Program and arguments (`argv[0]` looked up in `PATH`).
    pub argv: Vec<String>,
    /// Environment on top of the sandbox's defaults.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the sandbox's, else the home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes for the program's stdin (UTF-8).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Bytes for the program's stdin, base64 (instead of `stdin`).
    #[serde(default)]
    pub stdin_b64: Option<String>,
    /// Kill the program (its whole process group) after this many ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Keep stdin open after `stdin` (if any) for `POST .../stdin`, until
    /// a write with `close=true`; otherwise stdin ends after `stdin`.
    #[serde(default)]
    pub stdin_open: bool,
    /// Kill the program (SIGKILL to its process group) when the client
    /// that started it leaves before it ends (closes the stream, drops the
    /// `Exec`). Without it the program runs on; attach to it again with
    /// `GET .../execs/{exec}/output`.
    #[serde(default)]
    pub kill_on_disconnect: bool,
}

/// One line of an exec's NDJSON stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The program was handed to the agent.
    Started {
        /// Sequence number (0 here).
        seq: u64,
        /// Exec id.
        exec_id: String,
    },
    /// Output on stdout: `data` when UTF-8, else `data_b64`.
    Stdout {
        /// Sequence number.
        seq: u64,
        /// Text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// Bytes, base64, when not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    /// Output on stderr.
    Stderr {
        /// Sequence number.
        seq: u64,
        /// Text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// Bytes, base64, when not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    /// Output chunks `first_seq..=seq` were evicted from the agent's
    /// buffer (it keeps the newest output of each process, 1 MiB by
    /// default) before this reader got them.
    Gap {
        /// The last chunk missed (resume after it).
        seq: u64,
        /// The first chunk missed.
        first_seq: u64,
    },
    /// Without `follow`: everything up to `seq` was sent; the program
    /// still runs.
    CaughtUp {
        /// The last chunk produced so far.
        seq: u64,
    },
    /// Nothing happened for a while; the stream is alive.
    Keepalive {
        /// Sequence number of the last real event.
        seq: u64,
    },
    /// The program ended.
    Exited {
        /// Sequence number.
        seq: u64,
        /// How.
        #[serde(flatten)]
        result: ExecResult,
    },
    /// The exec failed (could not start, the guest failed).
    Error {
        /// Sequence number.
        seq: u64,
        /// The error.
        error: ErrorDetail,
    },
}

impl ExecEvent {
    /// Output event for `bytes` (text when UTF-8).
    pub fn output(stderr: bool, seq: u64, bytes: Vec<u8>) -> Self {
        let (data, data_b64) = match String::from_utf8(bytes) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(crate::b64::encode(e.as_bytes()))),
        };
        if stderr {
            ExecEvent::Stderr {
                seq,
                data,
                data_b64,
            }
        } else {
            ExecEvent::Stdout {
                seq,
                data,
                data_b64,
            }
        }
    }

    /// Its sequence number: output events carry the agent's chunk number
    /// (one sequence across stdout and stderr, from 1); the others the
    /// last chunk number before them. Resume an attach after it.
    pub fn seq(&self) -> u64 {
        match self {
            ExecEvent::Started { seq, .. }
            | ExecEvent::Stdout { seq, .. }
            | ExecEvent::Stderr { seq, .. }
            | ExecEvent::Gap { seq, .. }
            | ExecEvent::CaughtUp { seq }
            | ExecEvent::Keepalive { seq }
            | ExecEvent::Exited { seq, .. }
            | ExecEvent::Error { seq, .. } => *seq,
        }
    }

    /// The bytes of an output event.
    pub fn bytes(data: &Option<String>, data_b64: &Option<String>) -> Vec<u8> {
        match (data, data_b64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => crate::b64::decode(b).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// How an exec ended (`?wait=true` returns it with the output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exec id.
    pub exec_id: String,
    /// Exit code, when the program exited.
    pub exit_code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Output went over the cap and was cut.
    pub truncated: bool,
    /// Run time in the guest, ms.
    pub duration_ms: u64,
    /// All stdout (only in a `?wait=true` result), UTF-8 lossy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// All stderr (only in a `?wait=true` result), UTF-8 lossy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// Where an exec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// The program runs.
    Running,
    /// It ended (`result` says how).
    Exited,
    /// The agent no longer holds it (it forgets the oldest finished
    /// processes): its output cannot be read; `result` is there when the
    /// daemon saw the end.
    Gone,
}

/// One exec of a sandbox (`GET /v1/sandboxes/{id}/execs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecInfo {
    /// Exec id.
    pub exec_id: String,
    /// Sandbox.
    pub sandbox_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Started, ms since the epoch.
    pub started_at_ms: u64,
    /// Running, exited or gone.
    pub state: ExecState,
    /// Whether its stdin still takes `POST .../stdin`.
    pub stdin_open: bool,
    /// Oldest output chunk the agent still holds (`last_seq + 1` when
    /// none).
    pub first_seq: u64,
    /// Newest output chunk so far (0: none yet).
    pub last_seq: u64,
    /// How it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
}

/// `POST .../execs/{exec}/stdin`: how far stdin got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StdinWritten {
    /// Bytes of stdin the program has accepted in total: the offset of
    /// the next write. Less than the request's end when the program did
    /// not read in time: send the rest from here.
    pub accepted: u64,
    /// Whether stdin is still open.
    pub open: bool,
}

/// `POST .../execs/{exec}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// A number (1..=64) or a name (`TERM`, `SIGKILL`, ...).
    pub signal: SignalName,
}

/// A signal by number or name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SignalName {
    /// `15`.
    Number(i64),
    /// `"TERM"` or `"SIGTERM"` (any case).
    Name(String),
}

/// Signals known by name.
const SIGNAL_NAMES: [(&str, i32); 14] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("WINCH", libc::SIGWINCH),
];

impl SignalName {
    /// The signal number, or `invalid_argument` for an unknown name or a
    /// number outside 1..=64.
    pub fn number(&self) -> crate::Result<i32> {
        match self {
            SignalName::Number(n) => i32::try_from(*n)
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| {
                    crate::Error::invalid(format!("signal must be between 1 and 64, got {n}"))
                }),
            SignalName::Name(name) => {
                let upper = name.to_ascii_uppercase();
                let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
                if let Ok(n) = bare.parse::<i64>() {
                    return SignalName::Number(n).number();
                }
                SIGNAL_NAMES
                    .iter()
                    .find(|(known, _)| *known == bare)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| {
                        crate::Error::invalid(format!(
                            "unknown signal {name:?} (a number 1..=64, or one of {})",
                            SIGNAL_NAMES.map(|(n, _)| n).join(", ")
                        ))
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_or_name() {
        let n = |s: SignalName| s.number();
        assert_eq!(n(SignalName::Number(9)).expect("9"), 9);
        assert_eq!(n(SignalName::Name("term".into())).expect("term"), 15);
        assert_eq!(n(SignalName::Name("SIGKILL".into())).expect("kill"), 9);
        assert_eq!(n(SignalName::Name("sig10".into())).expect("10"), 10);
        for bad in [
            SignalName::Number(0),
            SignalName::Number(65),
            SignalName::Number(-9),
        ] {
            assert!(n(bad).is_err());
        }
        assert!(n(SignalName::Name("NOPE".into())).is_err());
        assert!(n(SignalName::Name(String::new())).is_err());
        let parsed: SignalRequest = serde_json::from_str(r#"{"signal":"TERM"}"#).expect("name");
        assert_eq!(parsed.signal.number().expect("term"), 15);
        let parsed: SignalRequest = serde_json::from_str(r#"{"signal":2}"#).expect("number");
        assert_eq!(parsed.signal.number().expect("int"), 2);
        assert!(serde_json::from_str::<SignalRequest>(r#"{"signal":[1]}"#).is_err());
    }

    #[test]
    fn every_event_has_a_sequence_number() {
        let gap = ExecEvent::Gap {
            seq: 9,
            first_seq: 3,
        };
        assert_eq!(gap.seq(), 9);
        let line = serde_json::to_string(&gap).expect("json");
        assert_eq!(line, r#"{"type":"gap","seq":9,"first_seq":3}"#);
        assert_eq!(ExecEvent::output(true, 4, b"x".to_vec()).seq(), 4);
    }
}
