//! Egress: which names (and IP ranges) a sandbox may reach through the
//! host's proxy.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An egress allowlist. Without one (the default) a sandbox has no way
/// out at all; with one, its programs reach the listed hosts through an
/// HTTP/HTTPS proxy (`HTTP_PROXY`/`HTTPS_PROXY` are set for them), and
/// nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Domain names: exact (`pypi.org`) or a wildcard (`*.npmjs.org`,
    /// which matches every subdomain but not `npmjs.org` itself).
    #[serde(default)]
    pub allow: Vec<String>,
    /// IP ranges (`203.0.113.0/24`) a program may name as an IP literal.
    /// Private, loopback, link-local and metadata addresses stay refused.
    #[serde(default)]
    pub cidrs: Vec<String>,
}

impl EgressSpec {
    /// Whether it allows nothing (the same as no allowlist).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.cidrs.is_empty()
    }
}
