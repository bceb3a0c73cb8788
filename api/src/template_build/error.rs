//! Why building an image from an OCI image failed.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Building a guest root image from an OCI image failed. Nothing is left
/// at the output path (nor in the scratch directory) after any of these.
#[derive(Debug, Error)]
pub enum OciBuildError {
    /// The builder needs root: owners and device nodes cannot be made on
    /// the host otherwise.
    #[error("building an image from an OCI image needs root (owners, device nodes and xattrs are set on a scratch tree); run it as root or through `kiln serve`")]
    NotRoot,
    /// The source is neither an OCI layout nor a `docker save` archive.
    #[error("{}: not an OCI image layout (oci-layout + index.json) nor a docker/podman save archive (manifest.json)", .0.display())]
    UnknownSource(PathBuf),
    /// Reading or writing a file failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done (`"cannot read"`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The outer archive is corrupt or truncated.
    #[error("corrupt or truncated archive {}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file the image names is not in the source.
    #[error("missing blob {name} ({what}) in the image")]
    MissingBlob {
        /// Digest or file name.
        name: String,
        /// What it was for (`"layer 2"`, `"config"`...).
        what: String,
    },
    /// A blob's content does not hash to its digest.
    #[error("digest mismatch for {what} {name}: content hashes to {actual}")]
    DigestMismatch {
        /// What it was for.
        what: String,
        /// Digest or file name that was expected.
        name: String,
        /// What the content hashes to.
        actual: String,
    },
    /// A blob's size is not the one its descriptor gives.
    #[error("size mismatch for {what} {name}: {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        /// What it was for.
        what: String,
        /// Its digest.
        name: String,
        /// Size from the descriptor.
        expected: u64,
        /// Size of the blob.
        actual: u64,
    },
    /// A digest is not `sha256:<64 hex>`.
    #[error("unsupported or malformed digest {0:?} (only sha256 is supported)")]
    BadDigest(String),
    /// A JSON document is malformed or too large.
    #[error("invalid {what}: {reason}")]
    BadJson {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
    /// The image index offers no usable image.
    #[error("{0}")]
    NoImage(String),
    /// The image is for another platform.
    #[error("the image is for {os}/{architecture}; kiln guests run linux/amd64")]
    WrongPlatform {
        /// Config `os`.
        os: String,
        /// Config `architecture`.
        architecture: String,
    },
    /// A layer's media type is not a tar (plain, gzip or zstd).
    #[error("layer {layer}: unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// Layer digest.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer is not a valid tar stream, or breaks a limit.
    #[error("layer {layer}: {reason}")]
    BadLayer {
        /// Layer digest.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A layer entry points outside the image root.
    #[error("layer {layer}: entry {entry:?} escapes the image root")]
    PathTraversal {
        /// Layer digest.
        layer: String,
        /// The entry's path (or link target).
        entry: String,
    },
    /// Applying a layer entry to the scratch tree failed.
    #[error("layer {layer}: cannot apply entry {entry:?}")]
    Apply {
        /// Layer digest.
        layer: String,
        /// The entry's path.
        entry: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The guest could not run anything in this image.
    #[error("the image cannot run in a kiln guest: {0}")]
    NotRunnable(String),
    /// `mkfs.erofs` failed or could not be run.
    #[error("packing the image with mkfs.erofs failed: {0}")]
    Pack(String),
}

impl OciBuildError {
    /// An I/O error on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// A malformed JSON document.
    pub(crate) fn json(what: impl Into<String>, reason: impl ToString) -> Self {
        Self::BadJson {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// A malformed layer.
    pub(crate) fn layer(layer: &str, reason: impl ToString) -> Self {
        Self::BadLayer {
            layer: layer.to_owned(),
            reason: reason.to_string(),
        }
    }
}
