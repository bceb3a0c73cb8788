//! Egress: the host side of a sandbox's only way out. Per sandbox with an
//! allowlist, an HTTP/HTTPS forward proxy listens on the unix socket
//! `<vm vsock uds>_<EGRESS_VSOCK_PORT>`; the guest agent forwards its
//! loopback proxy port there over vsock. The proxy checks the requested
//! name against the allowlist, resolves it itself, refuses inside
//! addresses after resolution, connects to the address it checked, and
//! reports every connection, allowed or denied.
//!
//! `policy.rs` (the allowlist), `addr.rs` (which addresses are refused),
//! `request.rs` (the request head), `proxy.rs` (the listener and one
//! connection), `pump.rs` (moving bytes under the sandbox's budget), `report.rs`
//! (reports rate-limited, with a count of those held back).

pub mod addr;
pub mod policy;
mod proxy;
mod pump;
mod report;
pub mod request;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub use kiln_agent::protocol::{EGRESS_GUEST_ADDR, EGRESS_VSOCK_PORT};
pub use policy::{Allowlist, PolicyError};
pub use proxy::EgressProxy;

/// What the proxy of one sandbox may do.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// The names and ranges it lets through.
    pub allowlist: Allowlist,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most bytes moved (both ways, all connections) over the sandbox's
    /// life.
    pub max_bytes: u64,
    /// Bytes the sandbox moved before this proxy started (a proxy
    /// re-attached after a daemon restart): they count against
    /// `max_bytes`.
    pub used_before: u64,
    /// How long a client has to send its whole request head.
    pub header_timeout: Duration,
    /// How long resolving and connecting upstream may take.
    pub connect_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Ranges let through although inside (loopback, private): for tests
    /// only. Anything listed here is reachable from the sandbox.
    pub allow_private: Vec<IpNet>,
}

/// How one connection went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Connected; it moved these bytes before it ended.
    Allowed {
        /// The address connected to.
        addr: SocketAddr,
        /// Bytes from the sandbox to the server.
        sent: u64,
        /// Bytes from the server to the sandbox.
        received: u64,
    },
    /// Refused (answered 400, 403 or 503), and why.
    Denied(String),
    /// Allowed but it could not be served (answered 502 or 504), and why.
    Failed(String),
}

/// One connection, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    /// `host:port` asked for, when the request got that far.
    pub target: Option<String>,
    /// How it went.
    pub verdict: Verdict,
    /// Connections before this one that were not reported (a guest
    /// opening them faster than reports may go out).
    pub unreported: u64,
}

/// Where a proxy reports its connections.
pub type EgressLog = Arc<dyn Fn(EgressEvent) + Send + Sync>;

/// Where a proxy reports the sandbox's bytes moved so far (all
/// connections, `used_before` included) after each allowed connection:
/// every one, unlike the rate-limited [`EgressLog`], so the budget can
/// outlive the proxy.
pub type EgressUsage = Arc<dyn Fn(u64) + Send + Sync>;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Binding or setting up the unix socket failed.
    #[error("egress proxy socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
