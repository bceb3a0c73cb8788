//! The lifecycle event feed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::EndReason;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A sandbox was created (a VM is being claimed or booted).
    Created,
    /// A sandbox became ready.
    Ready,
    /// A sandbox will expire soon (`expires_at_ms`).
    Expiring,
    /// A sandbox expired (TTL, idle) or its VM died.
    Expired,
    /// A sandbox was deleted.
    Deleted,
    /// A pool's VM failed to boot.
    PoolError,
}

/// One event; `seq` grows by one per event and survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Sequence number.
    pub seq: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What.
    pub kind: EventKind,
    /// The sandbox concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The template concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Why a sandbox ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// For `expiring`: when it expires, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Details (a pool error's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
