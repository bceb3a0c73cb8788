//! The one error type of the library, the daemon and the HTTP API: each
//! variant is one API error code (`{"error":{"code":...}}`) with one HTTP
//! status, so an error crosses the unix socket and comes back as itself.

use serde::{Deserialize, Serialize};

/// Why a sandbox ended (the reason a tombstone gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its time to live ran out.
    Ttl,
    /// Nothing used it for its idle timeout.
    Idle,
    /// It was deleted.
    Deleted,
    /// Its VM died.
    VmDied,
    /// The daemon shut down (drained) and stopped its VM.
    Shutdown,
}

impl EndReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::Idle => "idle",
            Self::Deleted => "deleted",
            Self::VmDied => "vm_died",
            Self::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every way a kiln call fails. Variants map 1:1 to the API's error codes
/// ([`Error::code`]) and HTTP statuses ([`Error::http_status`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `invalid_argument` (400): the request is malformed or out of range.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// What is wrong.
        message: String,
        /// Machine-readable context (allowed range, field).
        details: serde_json::Value,
    },
    /// `unauthenticated` (401): no token where one is needed, or one that
    /// is malformed, tampered with, expired, or whose sandbox has ended.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// `permission_denied` (403): a valid token that does not allow this
    /// (another sandbox, another operation, an administrator's route), or
    /// the guest refused (sandbox user's rights, read-only file system).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// `not_found` (404): no such sandbox, template, exec or guest file.
    #[error("not found: {0}")]
    NotFound(String),
    /// `conflict` (409): the state forbids it (idempotency key reused with
    /// another body, file exists, directory not empty).
    #[error("conflict: {0}")]
    Conflict(String),
    /// `template_in_use` (409): a template cannot be removed while its pool
    /// target is above 0 or a VM or sandbox uses it.
    #[error("template {template} is in use: {reason}")]
    TemplateInUse {
        /// Template.
        template: String,
        /// What uses it.
        reason: String,
    },
    /// `sandbox_expired` (410): the sandbox is gone; the tombstone says why.
    #[error("sandbox {id} has ended ({reason})")]
    SandboxExpired {
        /// Sandbox id.
        id: String,
        /// Why it ended.
        reason: EndReason,
    },
    /// `too_large` (413): a body over its limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// `pool_exhausted` (429): no warm VM and the request would not cold
    /// boot or wait long enough.
    #[error("the pool of template {template} is empty")]
    PoolExhausted {
        /// Template.
        template: String,
    },
    /// `host_capacity` (429): a host limit (live VMs, committed memory)
    /// forbids another VM.
    #[error("host limit {limit} reached ({in_use} in use, limit {max})")]
    HostCapacity {
        /// Which limit: `max_vms` or `max_memory_mib`.
        limit: String,
        /// Current use.
        in_use: u64,
        /// The limit.
        max: u64,
    },
    /// `draining` (503): the daemon is shutting down.
    #[error("the daemon is draining; no new work")]
    Draining,
    /// `unavailable` (503): the daemon cannot be reached (client side).
    #[error("kiln daemon unavailable: {0}")]
    Unavailable(String),
    /// `boot_timeout` (504): the VM did not become ready in time, or failed
    /// to boot.
    #[error("boot failed: {0}")]
    BootTimeout(String),
    /// `guest_disk_full` (507): the sandbox's disk is full.
    #[error("the sandbox's disk is full: {0}")]
    GuestDiskFull(String),
    /// `guest_error` (502): the guest agent failed or stopped answering.
    #[error("guest agent: {0}")]
    Guest(String),
    /// `internal` (500): a fault in the daemon.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON error body: `{"error":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`pool_exhausted`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// Context: limits, ranges, reasons.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Error {
    /// `invalid_argument` without details.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    /// `invalid_argument` for a number outside `[min, max]`.
    pub fn out_of_range(field: &str, value: u64, min: u64, max: u64) -> Self {
        Error::InvalidArgument {
            message: format!("{field} must be between {min} and {max}, got {value}"),
            details: serde_json::json!({"field": field, "min": min, "max": max, "value": value}),
        }
    }

    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TemplateInUse { .. } => "template_in_use",
            Self::SandboxExpired { .. } => "sandbox_expired",
            Self::TooLarge(_) => "too_large",
            Self::PoolExhausted { .. } => "pool_exhausted",
            Self::HostCapacity { .. } => "host_capacity",
            Self::Draining => "draining",
            Self::Unavailable(_) => "unavailable",
            Self::BootTimeout(_) => "boot_timeout",
            Self::GuestDiskFull(_) => "guest_disk_full",
            Self::Guest(_) => "guest_error",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidArgument { .. } => 400,
            Self::Unauthenticated(_) => 401,
            Self::PermissionDenied(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) | Self::TemplateInUse { .. } => 409,
            Self::SandboxExpired { .. } => 410,
            Self::TooLarge(_) => 413,
            Self::PoolExhausted { .. } | Self::HostCapacity { .. } => 429,
            Self::Internal(_) => 500,
            Self::Guest(_) => 502,
            Self::Draining | Self::Unavailable(_) => 503,
            Self::BootTimeout(_) => 504,
            Self::GuestDiskFull(_) => 507,
        }
    }

    /// Whether the same request may succeed if retried later (capacity
    /// frees up, a pool refills, a boot succeeds, the daemon comes back
    /// after a restart).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::PoolExhausted { .. }
                | Self::HostCapacity { .. }
                | Self::Draining
                | Self::Unavailable(_)
                | Self::BootTimeout(_)
        )
    }

    /// Machine-readable context.
    pub fn details(&self) -> serde_json::Value {
        match self {
            Self::InvalidArgument { details, .. } => details.clone(),
            Self::SandboxExpired { id, reason } => {
                serde_json::json!({"sandbox_id": id, "reason": reason})
            }
            Self::PoolExhausted { template } => serde_json::json!({"template": template}),
            Self::TemplateInUse { template, reason } => {
                serde_json::json!({"template": template, "reason": reason})
            }
            Self::HostCapacity { limit, in_use, max } => {
                serde_json::json!({"limit": limit, "in_use": in_use, "max": max})
            }
            _ => serde_json::Value::Null,
        }
    }

    /// The error as its JSON body.
    pub fn to_body(&self) -> ErrorBody {
        let message = match self {
            // The message alone, without the code's prefix.
            Self::InvalidArgument { message, .. } => message.clone(),
            Self::PermissionDenied(m)
            | Self::Unauthenticated(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooLarge(m)
            | Self::Unavailable(m)
            | Self::BootTimeout(m)
            | Self::GuestDiskFull(m)
            | Self::Guest(m)
            | Self::Internal(m) => m.clone(),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
                retryable: self.is_retryable(),
                details: self.details(),
            },
        }
    }

    /// The error an API body describes (what a client received).
    pub fn from_body(body: ErrorBody) -> Self {
        let ErrorDetail {
            code,
            message,
            details,
            ..
        } = body.error;
        let str_field = |k: &str| details[k].as_str().unwrap_or_default().to_string();
        let u64_field = |k: &str| details[k].as_u64().unwrap_or_default();
        match code.as_str() {
            "invalid_argument" => Self::InvalidArgument { message, details },
            "unauthenticated" => Self::Unauthenticated(message),
            "permission_denied" => Self::PermissionDenied(message),
            "not_found" => Self::NotFound(message),
            "conflict" => Self::Conflict(message),
            "template_in_use" => Self::TemplateInUse {
                template: str_field("template"),
                reason: str_field("reason"),
            },
            "sandbox_expired" => Self::SandboxExpired {
                id: str_field("sandbox_id"),
                reason: serde_json::from_value(details["reason"].clone())
                    .unwrap_or(EndReason::Deleted),
            },
            "too_large" => Self::TooLarge(message),
            "pool_exhausted" => Self::PoolExhausted {
                template: str_field("template"),
            },
            "host_capacity" => Self::HostCapacity {
                limit: str_field("limit"),
                in_use: u64_field("in_use"),
                max: u64_field("max"),
            },
            "draining" => Self::Draining,
            "unavailable" => Self::Unavailable(message),
            "boot_timeout" => Self::BootTimeout(message),
            "guest_disk_full" => Self::GuestDiskFull(message),
            "guest_error" => Self::Guest(message),
            "internal" => Self::Internal(message),
            _ => Self::Internal(format!("{code}: {message}")),
        }
    }
}

/// Result with kiln's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Error> {
        vec![
            Error::out_of_range("ttl_secs", 0, 1, 86_400),
            Error::Unauthenticated("a".into()),
            Error::PermissionDenied("p".into()),
            Error::NotFound("n".into()),
            Error::Conflict("c".into()),
            Error::TemplateInUse {
                template: "t".into(),
                reason: "its pool target is 1".into(),
            },
            Error::SandboxExpired {
                id: "sbx-1".into(),
                reason: EndReason::Idle,
            },
            Error::TooLarge("t".into()),
            Error::PoolExhausted {
                template: "minimal".into(),
            },
            Error::HostCapacity {
                limit: "max_vms".into(),
                in_use: 4,
                max: 4,
            },
            Error::Draining,
            Error::Unavailable("u".into()),
            Error::BootTimeout("b".into()),
            Error::GuestDiskFull("g".into()),
            Error::Guest("x".into()),
            Error::Internal("i".into()),
        ]
    }

    #[test]
    fn every_error_survives_the_wire_as_itself() {
        for e in all() {
            let json = serde_json::to_string(&e.to_body()).expect("serialize");
            let back = Error::from_body(serde_json::from_str(&json).expect("parse"));
            assert_eq!(back, e, "{json}");
            assert_eq!(back.http_status(), e.http_status());
        }
    }

    #[test]
    fn codes_statuses_and_retryability() {
        let codes: Vec<_> = all().iter().map(Error::code).collect();
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "codes are 1:1 with variants");
        let e = Error::out_of_range("ttl_secs", 0, 1, 86_400);
        assert_eq!((e.code(), e.http_status()), ("invalid_argument", 400));
        assert_eq!(e.details()["max"], 86_400);
        assert!(!e.is_retryable());
        let e = Error::PoolExhausted {
            template: "m".into(),
        };
        assert_eq!((e.http_status(), e.is_retryable()), (429, true));
        assert_eq!(
            Error::SandboxExpired {
                id: "a".into(),
                reason: EndReason::VmDied
            }
            .details()["reason"],
            "vm_died"
        );
        assert_eq!(Error::GuestDiskFull(String::new()).http_status(), 507);
        assert!(Error::Draining.is_retryable());
    }
}
