//! Sandboxes: what a create asks for and what a sandbox looks like.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::EndReason;

/// What to do when the template's pool has no ready VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// Boot a VM now (a pool miss; slower).
    #[default]
    Cold,
    /// Wait up to `wait_ms` for a pooled VM (or host capacity), then fail
    /// with 429.
    Wait,
    /// Fail at once with 429 `pool_exhausted`.
    Fail,
}

/// A file written into the sandbox at create (late-bound through the files
/// API, so the VM can come from the warm pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineFile {
    /// Guest path (relative paths start at the sandbox home).
    pub path: String,
    /// UTF-8 content.
    #[serde(default)]
    pub content: Option<String>,
    /// Binary content, base64 (instead of `content`).
    #[serde(default)]
    pub content_b64: Option<String>,
    /// Permission bits (default 0644).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Template name (default: the daemon's default template).
    #[serde(default)]
    pub template: Option<String>,
    /// Labels to find the sandbox by.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Environment defaults for every exec (an exec's own env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default working directory of execs.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Files to write before the sandbox is handed out.
    #[serde(default)]
    pub files: Vec<InlineFile>,
    /// Time to live in seconds, counted from ready.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Idle timeout in seconds: no API call and no running exec for this
    /// long ends the sandbox.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// When the pool is empty: cold boot (default), wait, or fail.
    #[serde(default)]
    pub on_empty: OnEmpty,
    /// With `on_empty: wait`: how long to wait, milliseconds.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Also issue a token scoped to this sandbox (returned once, in the
    /// create's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<super::TokenRequest>,
    /// Network egress: the names (and IP ranges) the sandbox may reach
    /// through its HTTP/HTTPS proxy. Absent: the template's allowlist
    /// (none by default: no network). Given: it replaces the template's,
    /// and must lie within it when the template has one; `{}` turns
    /// egress off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<super::EgressSpec>,
}

/// `PATCH /v1/sandboxes/{id}`: labels to set (an empty value removes a
/// label) and new timeouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxPatch {
    /// Labels to set; an empty value removes the label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// New TTL in seconds, counted from ready.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// New idle timeout in seconds.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
}

/// Where a sandbox is in its life (a create returns once it is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Usable.
    Ready,
    /// Gone; `end_reason` says why (a tombstone).
    Ended,
}

impl SandboxState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Ended => "ended",
        }
    }
}

impl std::str::FromStr for SandboxState {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "ready" => Ok(Self::Ready),
            "ended" => Ok(Self::Ended),
            other => Err(crate::Error::invalid(format!(
                "unknown state {other:?} (ready, ended)"
            ))),
        }
    }
}

/// Whether a sandbox's VM came from the warm pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LaunchType {
    /// A pooled VM (pool hit).
    Warm,
    /// Booted for this request (pool miss).
    Cold,
}

impl LaunchType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    /// Id (`sbx-...`).
    pub id: String,
    /// Template.
    pub template: String,
    /// State.
    pub state: SandboxState,
    /// Warm (pooled VM) or cold (booted for it).
    pub launch_type: LaunchType,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment defaults of execs.
    pub env: BTreeMap<String, String>,
    /// Default working directory of execs.
    pub cwd: Option<String>,
    /// The egress allowlist in force (none: no network at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<super::EgressSpec>,
    /// TTL, seconds from ready.
    pub ttl_secs: u64,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: u64,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Ready, ms since the epoch.
    pub ready_at_ms: Option<u64>,
    /// Last activity (API call or running exec), ms since the epoch.
    pub last_activity_ms: u64,
    /// When it ends unless used (the earlier of TTL and idle deadline), ms
    /// since the epoch.
    pub expires_at_ms: Option<u64>,
    /// Execs running now.
    pub running_execs: u32,
    /// Unix uid of the caller that created it.
    pub created_by_uid: Option<u32>,
    /// When it ended, ms since the epoch.
    pub ended_at_ms: Option<u64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
}

/// `GET /v1/sandboxes` filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Every label must match.
    pub labels: BTreeMap<String, String>,
    /// Only this state (default: the live ones).
    pub state: Option<SandboxState>,
}

impl SandboxFilter {
    /// Whether `s` passes.
    pub fn matches(&self, s: &SandboxInfo) -> bool {
        let state_ok = match self.state {
            Some(want) => s.state == want,
            None => s.state != SandboxState::Ended,
        };
        state_ok && self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    }
}
