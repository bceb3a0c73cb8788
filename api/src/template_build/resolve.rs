//! From a source directory to the image to build: which manifest (by
//! reference and platform), its config, and its layers with their digests.
//! Every JSON document is size-bounded and checked against its digest
//! before it is parsed.

use super::digest::{is_sha256_hex, Digest};
use super::limits::{MAX_INDEX_DEPTH, MAX_INDEX_ENTRIES, MAX_JSON_BYTES, MAX_LAYERS};
use super::source::SourceDir;
use super::spec::{
    self, Descriptor, DockerImage, ImageConfig, Index, Manifest, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX,
};
use super::OciBuildError;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// Unknown (docker archives): decided from the magic bytes.
    Sniff,
}

/// One layer to apply.
#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    /// Path of the blob inside the source.
    pub path: String,
    /// Digest of the blob as stored, when the source names one.
    pub blob_digest: Option<Digest>,
    /// Size of the blob as stored, when the manifest gives it.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: Digest,
    /// How the blob is compressed.
    pub compression: Compression,
}

impl LayerRef {
    /// A name for messages: the blob digest, else the path.
    pub(crate) fn label(&self) -> String {
        match &self.blob_digest {
            Some(d) => d.to_string(),
            None => self.path.clone(),
        }
    }
}

/// The image chosen from the source.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedImage {
    /// Manifest digest (for a legacy docker archive: the config digest,
    /// the image ID).
    pub digest: Digest,
    /// Config digest.
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
}

/// Whether `src` is an OCI image layout.
pub(crate) fn is_oci_layout(src: &SourceDir) -> Result<bool, OciBuildError> {
    Ok(src.open_file("oci-layout")?.is_some() && src.open_file("index.json")?.is_some())
}

/// Whether `src` is a `docker save` archive (unpacked).
pub(crate) fn is_docker_archive(src: &SourceDir) -> Result<bool, OciBuildError> {
    Ok(src.open_file("manifest.json")?.is_some())
}

/// Resolves the image in an OCI layout.
pub(crate) fn oci_layout(
    src: &SourceDir,
    reference: Option<&str>,
) -> Result<ResolvedImage, OciBuildError> {
    let layout = read_json(src, "oci-layout")?;
    let _: serde_json::Value = spec::parse(&layout, "oci-layout")?;
    let index: Index = spec::parse(&read_json(src, "index.json")?, "index.json")?;
    let mut desc = select(&index, reference, "index.json")?;
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = read_blob(src, &desc, "manifest")?;
        if !is_index(&desc, &bytes)? {
            let manifest: Manifest = spec::parse(&bytes, &format!("manifest {}", desc.digest))?;
            return image_of(src, Digest::parse(&desc.digest)?, manifest);
        }
        let what = format!("manifest list {}", desc.digest);
        let nested: Index = spec::parse(&bytes, &what)?;
        desc = select(&nested, None, &what)?;
    }
    Err(OciBuildError::NoImage(format!(
        "image indexes nested more than {MAX_INDEX_DEPTH} deep"
    )))
}

/// Resolves the image in an unpacked `docker save` archive.
pub(crate) fn docker_archive(
    src: &SourceDir,
    reference: Option<&str>,
) -> Result<ResolvedImage, OciBuildError> {
    let images: Vec<DockerImage> = spec::parse(&read_json(src, "manifest.json")?, "manifest.json")?;
    let tags = |i: &DockerImage| i.repo_tags.clone().unwrap_or_default();
    let chosen: Vec<&DockerImage> = match reference {
        Some(r) => images
            .iter()
            .filter(|i| {
                tags(i)
                    .iter()
                    .any(|t| t == r || t.rsplit_once(':').is_some_and(|(_, tag)| tag == r))
            })
            .collect(),
        None => images.iter().collect(),
    };
    let image = match chosen.as_slice() {
        [one] => *one,
        [] if reference.is_some() => {
            return Err(OciBuildError::NoImage(format!(
                "no image tagged {:?} in manifest.json (tags: {})",
                reference.unwrap_or_default(),
                images.iter().flat_map(tags).collect::<Vec<_>>().join(", ")
            )))
        }
        [] => {
            return Err(OciBuildError::NoImage(
                "manifest.json lists no image".into(),
            ))
        }
        _ => {
            return Err(OciBuildError::NoImage(format!(
                "manifest.json lists {} images; choose one by tag ({})",
                chosen.len(),
                images.iter().flat_map(tags).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let config_digest = digest_of_path(&image.config)
        .ok_or_else(|| OciBuildError::BadDigest(format!("config file name {:?}", image.config)))?;
    let bytes = read_named(src, &image.config, "config")?;
    config_digest.verify(&Digest::of(&bytes), "config")?;
    let config: ImageConfig = spec::parse(&bytes, &format!("config {config_digest}"))?;
    let layers = image
        .layers
        .iter()
        .map(|path| Blob {
            path: path.clone(),
            digest: digest_of_path(path),
            size: None,
            compression: Compression::Sniff,
        })
        .collect();
    with_layers(config_digest.clone(), config_digest, config, layers)
}

fn image_of(
    src: &SourceDir,
    digest: Digest,
    manifest: Manifest,
) -> Result<ResolvedImage, OciBuildError> {
    let config_digest = Digest::parse(&manifest.config.digest)?;
    let bytes = read_blob(src, &manifest.config, "config")?;
    let config: ImageConfig = spec::parse(&bytes, &format!("config {config_digest}"))?;
    let mut layers = Vec::with_capacity(manifest.layers.len().min(MAX_LAYERS));
    for l in manifest.layers.iter().take(MAX_LAYERS + 1) {
        let d = Digest::parse(&l.digest)?;
        let compression =
            compression_of(&l.media_type).ok_or_else(|| OciBuildError::UnsupportedLayer {
                layer: l.digest.clone(),
                media_type: l.media_type.clone(),
            })?;
        layers.push(Blob {
            path: format!("blobs/sha256/{}", d.hex()),
            digest: Some(d),
            size: l.size,
            compression,
        });
    }
    with_layers(digest, config_digest, config, layers)
}

/// A layer blob as the manifest names it.
struct Blob {
    path: String,
    digest: Option<Digest>,
    size: Option<u64>,
    compression: Compression,
}

fn with_layers(
    digest: Digest,
    config_digest: Digest,
    config: ImageConfig,
    layers: Vec<Blob>,
) -> Result<ResolvedImage, OciBuildError> {
    if config.os != "linux" || config.architecture != "amd64" {
        return Err(OciBuildError::WrongPlatform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
        });
    }
    if layers.len() > MAX_LAYERS {
        return Err(OciBuildError::json(
            format!("image {digest}"),
            format!("more than {MAX_LAYERS} layers"),
        ));
    }
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(OciBuildError::json(
            format!("config {config_digest}"),
            format!(
                "rootfs.diff_ids lists {} layers, the manifest {}",
                config.rootfs.diff_ids.len(),
                layers.len()
            ),
        ));
    }
    let layers = layers
        .into_iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(blob, diff_id)| {
            Ok(LayerRef {
                path: blob.path,
                blob_digest: blob.digest,
                size: blob.size,
                diff_id: Digest::parse(diff_id)?,
                compression: blob.compression,
            })
        })
        .collect::<Result<_, OciBuildError>>()?;
    Ok(ResolvedImage {
        digest,
        config_digest,
        config,
        layers,
    })
}

/// Picks one entry of `index`: by reference when given, then the only
/// one, or the only linux/amd64 one.
fn select(index: &Index, reference: Option<&str>, what: &str) -> Result<Descriptor, OciBuildError> {
    if index.manifests.len() > MAX_INDEX_ENTRIES {
        return Err(OciBuildError::json(
            what,
            format!("more than {MAX_INDEX_ENTRIES} entries"),
        ));
    }
    let names = |d: &Descriptor| {
        [ANNOTATION_REF_NAME, ANNOTATION_IMAGE_NAME]
            .iter()
            .filter_map(|k| d.annotations.get(*k).cloned())
            .collect::<Vec<_>>()
    };
    let mut candidates: Vec<&Descriptor> = match reference {
        Some(r) => index
            .manifests
            .iter()
            .filter(|d| names(d).iter().any(|n| n == r))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    if candidates.is_empty() {
        let all: Vec<String> = index.manifests.iter().flat_map(names).collect();
        return Err(OciBuildError::NoImage(match reference {
            Some(r) => format!("no image named {r:?} in {what} (names: {})", all.join(", ")),
            None => format!("{what} lists no image"),
        }));
    }
    if candidates.len() > 1 || candidates[0].platform.is_some() {
        let platforms: Vec<String> = candidates
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .collect();
        let amd64: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| d.platform.as_ref().is_none_or(|p| p.is_linux_amd64()))
            .collect();
        if amd64.is_empty() {
            return Err(OciBuildError::NoImage(format!(
                "{what} has no linux/amd64 entry (platforms: {})",
                platforms.join(", ")
            )));
        }
        candidates = amd64;
    }
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        many => Err(OciBuildError::NoImage(format!(
            "{what} lists {} images; choose one by name ({})",
            many.len(),
            many.iter()
                .flat_map(|d| names(d))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Whether the blob `bytes` behind `desc` is an index rather than a
/// manifest (the media type is optional in both places).
fn is_index(desc: &Descriptor, bytes: &[u8]) -> Result<bool, OciBuildError> {
    if desc.media_type == MEDIA_OCI_INDEX || desc.media_type == MEDIA_DOCKER_LIST {
        return Ok(true);
    }
    let v: serde_json::Value = spec::parse(bytes, &format!("manifest {}", desc.digest))?;
    Ok(v.get("manifests").is_some() && v.get("config").is_none())
}

fn compression_of(media_type: &str) -> Option<Compression> {
    let t = media_type
        .strip_prefix("application/vnd.oci.image.layer.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."))?;
    let t = t
        .trim_start_matches("v1.")
        .trim_start_matches("nondistributable.v1.");
    let t = t.trim_start_matches("foreign.").trim_start_matches("diff.");
    match t {
        "tar" => Some(Compression::None),
        "tar+gzip" | "tar.gzip" => Some(Compression::Gzip),
        "tar+zstd" | "tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// The digest a docker archive path names (`blobs/sha256/<hex>` or
/// `<hex>.json`), if any.
fn digest_of_path(path: &str) -> Option<Digest> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    is_sha256_hex(hex).then(|| Digest::parse(&format!("sha256:{hex}")).ok())?
}

fn read_json(src: &SourceDir, rel: &str) -> Result<Vec<u8>, OciBuildError> {
    read_named(src, rel, rel)
}

fn read_named(src: &SourceDir, rel: &str, what: &str) -> Result<Vec<u8>, OciBuildError> {
    src.read_bounded(rel, MAX_JSON_BYTES)?
        .ok_or_else(|| OciBuildError::MissingBlob {
            name: rel.to_owned(),
            what: what.to_owned(),
        })
}

/// Reads the JSON blob `desc` names and checks its size and content
/// against it.
fn read_blob(src: &SourceDir, desc: &Descriptor, what: &str) -> Result<Vec<u8>, OciBuildError> {
    let d = Digest::parse(&desc.digest)?;
    let bytes = src
        .read_bounded(&format!("blobs/sha256/{}", d.hex()), MAX_JSON_BYTES)?
        .ok_or_else(|| OciBuildError::MissingBlob {
            name: desc.digest.clone(),
            what: what.to_owned(),
        })?;
    check_size(desc.size, bytes.len() as u64, what, &d)?;
    d.verify(&Digest::of(&bytes), what)?;
    Ok(bytes)
}

/// Fails when a blob's size is not the `expected` one its descriptor gives.
pub(crate) fn check_size(
    expected: Option<u64>,
    actual: u64,
    what: &str,
    digest: &Digest,
) -> Result<(), OciBuildError> {
    match expected {
        Some(size) if size != actual => Err(OciBuildError::SizeMismatch {
            what: what.to_owned(),
            name: digest.to_string(),
            expected: size,
            actual,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types() {
        for (t, c) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            assert_eq!(compression_of(t), Some(c), "{t}");
        }
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+bzip2"),
            None
        );
        assert_eq!(compression_of("text/plain"), None);
    }

    #[test]
    fn docker_paths_name_digests() {
        let hex = "a".repeat(64);
        assert!(digest_of_path(&format!("{hex}.json")).is_some());
        assert!(digest_of_path(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_of_path("abc/layer.tar").is_none());
    }

    fn desc(name: &str, platform: Option<(&str, &str)>) -> Descriptor {
        spec::parse(
            serde_json::json!({
                "digest": format!("sha256:{}", "b".repeat(64)),
                "annotations": {ANNOTATION_REF_NAME: name},
                "platform": platform.map(|(os, a)| serde_json::json!({"os": os, "architecture": a})),
            })
            .to_string()
            .as_bytes(),
            "test",
        )
        .expect("descriptor")
    }

    #[test]
    fn selection_by_name_and_platform() {
        let index = Index {
            manifests: vec![desc("a", Some(("linux", "arm64"))), desc("b", None)],
        };
        assert_eq!(
            select(&index, Some("b"), "i").expect("b").annotations[ANNOTATION_REF_NAME],
            "b"
        );
        assert_eq!(
            select(&index, None, "i").expect("amd64 or any").annotations[ANNOTATION_REF_NAME],
            "b"
        );
        let err = select(&index, Some("a"), "i").expect_err("arm only");
        assert!(
            err.to_string()
                .contains("no linux/amd64 entry (platforms: linux/arm64)"),
            "{err}"
        );
        assert!(
            select(&index, Some("c"), "i").is_err_and(|e| e.to_string().contains("names: a, b"))
        );
        let two = Index {
            manifests: vec![desc("a", None), desc("b", None)],
        };
        assert!(select(&two, None, "i").is_err_and(|e| e.to_string().contains("choose one")));
    }
}
