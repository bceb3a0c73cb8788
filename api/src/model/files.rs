//! Guest files as the API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (not followed).
    Symlink,
    /// Anything else.
    Other,
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Name (last path component).
    pub name: String,
    /// Kind.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ms since the epoch.
    pub mtime_ms: i64,
}

impl From<kiln_agent::protocol::files::Entry> for FileEntry {
    fn from(e: kiln_agent::protocol::files::Entry) -> Self {
        use kiln_agent::protocol::files::EntryKind as K;
        FileEntry {
            name: e.name,
            kind: match e.kind {
                K::File => EntryKind::File,
                K::Dir => EntryKind::Dir,
                K::Symlink => EntryKind::Symlink,
                K::Other => EntryKind::Other,
            },
            size: e.size,
            mode: e.mode,
            mtime_ms: e
                .mtime_secs
                .saturating_mul(1000)
                .saturating_add(i64::from(e.mtime_nanos / 1_000_000)),
        }
    }
}

/// A completed upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileWritten {
    /// Guest path.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}
