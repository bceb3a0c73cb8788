//! The types of the API: what callers send and get back, the same for the
//! embedded core, the HTTP API and the client (serde for the wire, utoipa
//! for the OpenAPI document).

mod audit;
mod egress;
mod event;
mod exec;
mod files;
mod pool;
mod sandbox;
mod token;

pub use audit::{
    AuditFilter, AuditKind, AuditOutcome, AuditRecord, AuditResult, AuditWhat, AUDIT_LIMIT,
};
pub use egress::EgressSpec;
pub use event::{Event, EventKind};
pub use exec::{
    ExecEvent, ExecInfo, ExecResult, ExecSpec, ExecState, SignalName, SignalRequest, StdinWritten,
};
pub use files::{EntryKind, FileEntry, FileWritten};
pub use pool::{PoolInfo, PoolMemory, PoolUpdate, TemplateInfo};
pub use sandbox::{
    InlineFile, LaunchType, OnEmpty, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec,
    SandboxState,
};
pub use token::{CreatedSandbox, IssuedToken, TokenOp, TokenRequest};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /v1/health`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `draining`.
    pub status: String,
}

/// `GET /v1/info`: the daemon and its limits.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Info {
    /// kiln version.
    pub version: String,
    /// Whether the daemon drains (refuses new work).
    pub draining: bool,
    /// Live VMs (booting, pooled and in sandboxes).
    pub vms: u64,
    /// Most live VMs.
    pub max_vms: u64,
    /// Guest memory committed to live VMs, MiB.
    pub memory_mib: u64,
    /// Most guest memory committed, MiB.
    pub max_memory_mib: u64,
    /// Allowed sandbox TTLs, seconds: `[1, max]`, default.
    pub ttl_secs: Range,
    /// Allowed idle timeouts, seconds.
    pub idle_timeout_secs: Range,
    /// Allowed exec timeouts, milliseconds.
    pub exec_timeout_ms: Range,
}

/// An allowed range and its default.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Range {
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Value when none is given.
    pub default: u64,
}

impl Range {
    /// `value` (or the default) when in range, else an `invalid_argument`
    /// naming the range.
    pub fn check(&self, field: &str, value: Option<u64>) -> crate::Result<u64> {
        let v = value.unwrap_or(self.default);
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(crate::Error::out_of_range(field, v, self.min, self.max))
        }
    }
}
