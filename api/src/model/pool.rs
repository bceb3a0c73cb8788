//! Templates and their warm pools.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A template (the pool key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateInfo {
    /// Name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Guest kernel.
    pub kernel: Option<String>,
    /// Initramfs.
    pub initramfs: Option<String>,
    /// Runtime image.
    pub image: Option<String>,
    /// Whether VMs can be started from it (its files exist).
    pub available: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// `builtin`, `config` (the daemon's config file) or `registry`
    /// (`kiln template build`).
    #[serde(default)]
    pub source: String,
    /// A registry template's image hash (hex SHA-256).
    #[serde(default)]
    pub content_hash: Option<String>,
    /// A registry template's revision (its manifest's hash): changes with
    /// every rebuild.
    #[serde(default)]
    pub revision: Option<String>,
}

/// A template's warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    /// Template.
    pub template: String,
    /// VMs the pool keeps ready.
    pub target: u32,
    /// VMs ready now.
    pub ready: u32,
    /// VMs booting now.
    pub booting: u32,
    /// Boot failures in a row.
    pub consecutive_failures: u32,
    /// The last boot failure.
    pub last_error: Option<String>,
    /// While backing off: when the next boot may start, ms since the epoch.
    pub backoff_until_ms: Option<u64>,
    /// Host memory of the ready VMs together (with their VMM processes),
    /// when it could be read.
    #[serde(default)]
    pub memory: Option<PoolMemory>,
}

/// Host memory of a pool's ready VMs, bytes, summed over them. Clones of a
/// template snapshot share its memory file's pages until they write them:
/// `shared` is what they have in common with other processes, `private`
/// what only each has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolMemory {
    /// VMs counted.
    pub vms: u32,
    /// Resident set.
    pub rss_bytes: u64,
    /// Proportional set (shared pages divided among their sharers).
    pub pss_bytes: u64,
    /// Pages only one VM maps.
    pub private_bytes: u64,
    /// Pages mapped by others too.
    pub shared_bytes: u64,
}

/// `PUT /v1/pools/{template}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    /// VMs to keep ready (0 turns pooling off).
    pub target: u32,
}
