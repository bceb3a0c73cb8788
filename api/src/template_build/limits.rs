//! Bounds on everything a hostile image controls.

/// Longest JSON document (index, manifest, config, manifest.json).
pub(crate) const MAX_JSON_BYTES: u64 = 4 << 20;
/// Most layers in one image.
pub(crate) const MAX_LAYERS: usize = 256;
/// Most entries in one layer (or in an outer archive).
pub(crate) const MAX_LAYER_ENTRIES: usize = 2_000_000;
/// Most entries in a `docker save` archive.
pub(crate) const MAX_ARCHIVE_ENTRIES: usize = 100_000;
/// Longest entry path or link target.
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// Longest PAX extended header or GNU long name.
pub(crate) const MAX_EXTENSION_BYTES: u64 = 1 << 20;
/// Most xattrs on one entry.
pub(crate) const MAX_XATTRS: usize = 128;
/// Most nested image indexes followed from `index.json`.
pub(crate) const MAX_INDEX_DEPTH: usize = 3;
/// Most manifests listed in one index.
pub(crate) const MAX_INDEX_ENTRIES: usize = 1024;
/// Default bound on the unpacked size of all layers together.
pub(crate) const DEFAULT_MAX_UNPACKED_BYTES: u64 = 32 << 30;
