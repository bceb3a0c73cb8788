//! Custom templates from OCI images: [`build_from_oci`] turns an OCI image
//! layout directory or a `docker save` / `podman save` archive into a
//! read-only erofs root image for the guest, and returns what the image's
//! config says about running it ([`OciImage`]).
//!
//! The steps, one module each: `source` (the layout, or the archive
//! unpacked into the scratch directory), `resolve` (index → manifest →
//! config → layers, by reference and linux/amd64, each JSON blob bounded
//! and checked against its digest), `layer` (each blob hashed, then
//! decompressed — gzip, zstd or plain — and checked against its `diff_id`),
//! `tarstream` (entries with bounded PAX/GNU extensions), `tree` (entries
//! applied with whiteouts, opaque directories, hard links, owners, modes,
//! xattrs and mtimes, every path resolved with `RESOLVE_IN_ROOT`), `fixup`
//! (mount points, `/home/sandbox` and the sandbox user the guest agent
//! needs), `check` (a `/bin/sh` or entrypoint the guest can exec) and
//! `pack` (`mkfs.erofs`, reproducible).
//!
//! It needs root (owners, device nodes and `trusted.*` xattrs are made on
//! a real scratch tree); as another user it refuses with
//! [`OciBuildError::NotRoot`].

mod check;
mod digest;
mod error;
mod fixup;
mod layer;
mod limits;
mod pack;
mod resolve;
mod source;
mod spec;
mod tarstream;
mod tree;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::OciBuildError;

/// How [`build_from_oci`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciBuildOptions {
    /// Which image, when the source holds several: an
    /// `org.opencontainers.image.ref.name` (or `io.containerd.image.name`)
    /// annotation of `index.json`, or a `docker save` tag (`name:tag` or
    /// just `tag`). `None`: the only image (the linux/amd64 one of a
    /// manifest list).
    pub reference: Option<String>,
    /// Where the scratch tree is made (it needs the image's unpacked size
    /// free). `None`: next to the output image.
    pub scratch_dir: Option<PathBuf>,
    /// Refuse images whose layers unpack to more than this many bytes.
    pub max_unpacked_bytes: u64,
    /// Longest `mkfs.erofs` may take.
    pub pack_timeout: Duration,
}

impl Default for OciBuildOptions {
    fn default() -> Self {
        Self {
            reference: None,
            scratch_dir: None,
            max_unpacked_bytes: limits::DEFAULT_MAX_UNPACKED_BYTES,
            pack_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// The image built, and how its config says to run it: what a template
/// registry stores next to the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImage {
    /// Default environment (`KEY=value`).
    pub env: Vec<String>,
    /// Default working directory.
    pub working_dir: Option<String>,
    /// User the image asks to run as (kiln runs programs as uid 1000).
    pub user: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// Default arguments (or command).
    pub cmd: Vec<String>,
    /// Config `architecture` (always `amd64`).
    pub architecture: String,
    /// Config `os` (always `linux`).
    pub os: String,
    /// Manifest digest (`sha256:...`); for a legacy `docker save` archive,
    /// which has no manifest blob, the config digest (the image ID).
    pub digest: String,
    /// Config digest.
    pub config_digest: String,
    /// Size of the erofs image written.
    pub image_bytes: u64,
    /// Uncompressed size of all layers.
    pub unpacked_bytes: u64,
    /// Number of layers applied.
    pub layers: usize,
}

/// Builds a read-only guest root image from an OCI image.
///
/// `source` is an OCI image layout directory or a `docker save` /
/// `podman save` archive (plain, gzip or zstd; an OCI layout in a tar
/// works too). The image is written to `out_image` (replaced atomically);
/// on any error nothing is left there or in the scratch directory.
pub fn build_from_oci(
    source: &Path,
    out_image: &Path,
    opts: &OciBuildOptions,
) -> Result<OciImage, OciBuildError> {
    if !rustix::process::geteuid().is_root() {
        return Err(OciBuildError::NotRoot);
    }
    let scratch_parent = match &opts.scratch_dir {
        Some(d) => d.clone(),
        None => match out_image.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        },
    };
    let scratch = Scratch::create(&scratch_parent)?;
    let meta =
        std::fs::metadata(source).map_err(|e| OciBuildError::io("cannot read", source, e))?;
    let src = if meta.is_dir() {
        source::SourceDir::open(source)?
    } else {
        let dir = scratch.0.join("archive");
        source::unpack_archive(source, &dir, opts.max_unpacked_bytes)?;
        source::SourceDir::open(&dir)?
    };
    let reference = opts.reference.as_deref();
    let image = if resolve::is_oci_layout(&src)? {
        resolve::oci_layout(&src, reference)?
    } else if resolve::is_docker_archive(&src)? {
        resolve::docker_archive(&src, reference)?
    } else {
        return Err(OciBuildError::UnknownSource(source.to_owned()));
    };
    tracing::info!(
        digest = %image.digest,
        layers = image.layers.len(),
        "building an image from {}",
        source.display()
    );

    let mut tree = tree::Tree::create(&scratch.0.join("root"))?;
    let mut budget = opts.max_unpacked_bytes;
    for (i, l) in image.layers.iter().enumerate() {
        layer::apply_layer(&mut tree, &src, i, l, &mut budget)?;
    }
    let run = image.config.config.clone().unwrap_or_default();
    fixup::add_sandbox_needs(&tree)?;
    check::runnable(&tree, &run)?;
    let image_bytes = pack::erofs(
        tree.path(),
        out_image,
        &scratch.0,
        &image.digest,
        tree.max_mtime(),
        opts.pack_timeout,
    )?;
    Ok(OciImage {
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        architecture: image.config.architecture,
        os: image.config.os,
        digest: image.digest.to_string(),
        config_digest: image.config_digest.to_string(),
        image_bytes,
        unpacked_bytes: opts.max_unpacked_bytes - budget,
        layers: image.layers.len(),
    })
}

/// The build's scratch directory, removed with everything in it when
/// dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &Path) -> Result<Self, OciBuildError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = parent.join(format!(
            ".kiln-oci-build-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| OciBuildError::io("cannot create", &dir, e))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(
                "cannot remove the scratch directory {}: {e}",
                self.0.display()
            );
        }
    }
}
