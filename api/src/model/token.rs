//! Sandbox tokens: what a create asks for and what it hands back.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::SandboxInfo;

/// An operation a sandbox token may allow (reading the sandbox itself and
/// keeping it alive come with any token).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TokenOp {
    /// Start execs, list them, attach, write stdin, signal.
    Exec,
    /// Read, write, list, stat, move and remove files.
    Files,
}

impl TokenOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Files => "files",
        }
    }
}

/// `token` of a create: a token scoped to the new sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token allows (at least one).
    pub ops: Vec<TokenOp>,
    /// Lifetime in seconds (default: the sandbox's TTL). The token dies
    /// with the sandbox in any case.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Who holds it, as the audit trail names them (default `uid:<creator>`);
    /// 1 to 128 visible ASCII characters.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A token issued with a create. Send it as `Authorization: Bearer
/// <token>`; it is shown once and not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: String,
    /// Who holds it (the audit trail's name for its holder).
    pub subject: String,
    /// What it allows.
    pub ops: Vec<TokenOp>,
    /// When it stops working, ms since the epoch (earlier if the sandbox
    /// ends).
    pub expires_at_ms: u64,
}

/// `POST /v1/sandboxes` answer: the sandbox, and its token when one was
/// asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedSandbox {
    /// The sandbox.
    #[serde(flatten)]
    pub sandbox: SandboxInfo,
    /// The token asked for with `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<IssuedToken>,
}
