//! The audit trail as the API shows it: who did what to which sandbox,
//! and how it went.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A sandbox was created (or a create failed).
    Create,
    /// Labels or timeouts changed.
    Patch,
    /// A caller deleted a sandbox.
    Delete,
    /// A sandbox ended on its own (TTL, idle, VM death, shutdown).
    End,
    /// An exec started (or failed to start).
    Exec,
    /// An exec ended: exit code, signal, duration.
    ExecEnd,
    /// Bytes were written to an exec's stdin.
    Stdin,
    /// A signal was sent to an exec.
    Signal,
    /// A file was written into a sandbox.
    FileWrite,
    /// A file was read out of a sandbox.
    FileRead,
    /// A directory was made.
    Mkdir,
    /// A path was moved.
    Rename,
    /// A path was removed.
    Remove,
    /// A pool's target changed.
    PoolChange,
    /// A request with a token, or without one where one is needed, was
    /// refused.
    TokenDenied,
    /// A connection out of a sandbox through its egress proxy, allowed
    /// (with the bytes it moved) or denied (and why).
    Egress,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: [AuditKind; 16] = [
        Self::Create,
        Self::Patch,
        Self::Delete,
        Self::End,
        Self::Exec,
        Self::ExecEnd,
        Self::Stdin,
        Self::Signal,
        Self::FileWrite,
        Self::FileRead,
        Self::Mkdir,
        Self::Rename,
        Self::Remove,
        Self::PoolChange,
        Self::TokenDenied,
        Self::Egress,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::End => "end",
            Self::Exec => "exec",
            Self::ExecEnd => "exec_end",
            Self::Stdin => "stdin",
            Self::Signal => "signal",
            Self::FileWrite => "file_write",
            Self::FileRead => "file_read",
            Self::Mkdir => "mkdir",
            Self::Rename => "rename",
            Self::Remove => "remove",
            Self::PoolChange => "pool_change",
            Self::TokenDenied => "token_denied",
            Self::Egress => "egress",
        }
    }
}

impl std::str::FromStr for AuditKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                crate::Error::invalid(format!("unknown audit kind {s:?} ({})", names.join(", ")))
            })
    }
}

/// How the audited action went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Done.
    #[default]
    Ok,
    /// Tried and failed (`reason` holds the error code).
    Error,
    /// Refused before anything was done (`reason` says why).
    Denied,
}

/// What was asked for (the fields that apply to the kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditWhat {
    /// The exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    /// The program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A guest path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bytes moved (file written or read, stdin written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The signal sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Anything else: template, pool target, end reason, a rename's
    /// target, the request of a denied call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How it went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditResult {
    /// Done, failed or refused.
    pub outcome: AuditOutcome,
    /// The error code, or why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An exec's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// How long an exec ran, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl AuditResult {
    /// Done.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Done, or failed with the error's code.
    pub fn of<T>(r: &crate::Result<T>) -> Self {
        match r {
            Ok(_) => Self::ok(),
            Err(e) => AuditResult {
                outcome: AuditOutcome::Error,
                reason: Some(e.code().to_string()),
                ..Self::default()
            },
        }
    }

    /// Refused, and why.
    pub fn denied(reason: impl Into<String>) -> Self {
        AuditResult {
            outcome: AuditOutcome::Denied,
            reason: Some(reason.into()),
            ..Self::default()
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Growing id (the order of recording).
    pub id: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The unix uid of a socket peer (or of the embedding process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The subject of the token the caller held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// What kind of action.
    pub kind: AuditKind,
    /// What was asked for.
    #[serde(flatten)]
    pub what: AuditWhat,
    /// How it went.
    #[serde(flatten)]
    pub result: AuditResult,
}

/// `GET /v1/audit` query: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Only this sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Only records at or after this time, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>)]
    pub kind: Option<AuditKind>,
    /// At most this many, the newest (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Default and largest `limit` of an audit query.
pub const AUDIT_LIMIT: (u32, u32) = (1000, 10_000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in AuditKind::ALL {
            assert_eq!(k.as_str().parse::<AuditKind>().expect("parse"), k);
            assert_eq!(
                serde_json::to_value(k).expect("json"),
                serde_json::json!(k.as_str())
            );
        }
        assert!("nope".parse::<AuditKind>().is_err());
    }

    #[test]
    fn a_record_is_flat_json() {
        let r = AuditRecord {
            id: 1,
            at_ms: 2,
            uid: None,
            subject: Some("agent".into()),
            sandbox_id: Some("sbx-1".into()),
            kind: AuditKind::ExecEnd,
            what: AuditWhat {
                exec_id: Some("exec-1".into()),
                ..AuditWhat::default()
            },
            result: AuditResult {
                exit_code: Some(3),
                ..AuditResult::ok()
            },
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["exec_id"], "exec-1");
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["outcome"], "ok");
        assert!(v.get("uid").is_none());
        assert_eq!(serde_json::from_value::<AuditRecord>(v).expect("back"), r);
    }
}
