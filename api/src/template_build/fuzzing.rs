//! Entry points for the `oci_image` fuzz target (cargo feature `fuzzing`,
//! not an API): the JSON documents and the layer tar streams a hostile
//! image controls.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::resolve::Compression;
use super::spec::{self, DockerImage, ImageConfig, Index, Manifest};
use super::tree::Tree;
use super::{layer, OciBuildError};

/// Parses `bytes` as document `kind % 4`: index, manifest, config,
/// `manifest.json`.
pub fn parse_document(kind: u8, bytes: &[u8]) -> Result<(), OciBuildError> {
    match kind % 4 {
        0 => spec::parse::<Index>(bytes, "index").map(|_| ()),
        1 => spec::parse::<Manifest>(bytes, "manifest").map(|_| ()),
        2 => spec::parse::<ImageConfig>(bytes, "config").map(|_| ()),
        _ => spec::parse::<Vec<DockerImage>>(bytes, "manifest.json").map(|_| ()),
    }
}

/// Applies `bytes` (a layer blob, compression sniffed) to a fresh scratch
/// tree and asserts nothing appeared outside it; removes it afterwards.
pub fn apply_layer_blob(bytes: &[u8]) -> Result<(), OciBuildError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let scratch: PathBuf = std::env::temp_dir().join(format!(
        "kiln-fuzz-oci-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let outside = scratch.join("outside");
    std::fs::create_dir_all(&outside)
        .map_err(|e| OciBuildError::io("cannot create", &outside, e))?;
    let result = (|| {
        let mut tree = Tree::create(&scratch.join("root"))?;
        let stream = layer::decompress(bytes, Compression::Sniff)
            .map_err(|e| OciBuildError::layer("fuzz", e))?;
        // Bounded like a real build's budget.
        layer::apply_tar(&mut tree, "fuzz", stream.take(64 << 20))
    })();
    let escaped = std::fs::read_dir(&outside).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(escaped, 0, "a layer entry was written outside the tree");
    result
}
