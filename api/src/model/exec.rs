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
