//! The JSON documents of an image: OCI index and manifest, image config,
//! and `docker save`'s `manifest.json`. Only the fields the builder reads;
//! unknown fields are ignored, as the specs require.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::OciBuildError;

/// Media type of an OCI image index.
pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker manifest list.
pub(crate) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation naming a manifest in an OCI layout's `index.json`.
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name containerd (and docker save) add next to it.
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// Media type of the target.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size of the target in bytes (checked when given).
    #[serde(default)]
    pub size: Option<u64>,
    /// Platform, in indexes.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (image names in `index.json`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An image's platform.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
}

impl Platform {
    /// Whether a kiln guest runs it.
    pub(crate) fn is_linux_amd64(&self) -> bool {
        self.os == "linux" && self.architecture == "amd64"
    }
}

/// An image index (`index.json`, or a manifest list blob).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    /// Its entries.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The image configuration blob.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Defaults for running the image.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// How the image wants its program run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunConfig {
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User (name, uid, `uid:gid`).
    #[serde(default)]
    pub user: Option<String>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RootFs {
    /// Digest of each uncompressed layer tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerImage {
    /// Path of the config in the archive.
    pub config: String,
    /// `name:tag` list.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// Parses `bytes` as a `T`, naming `what` in the error.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &str,
) -> Result<T, OciBuildError> {
    serde_json::from_slice(bytes).map_err(|e| OciBuildError::json(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_parse_and_unknown_ones_are_ignored() {
        let c: ImageConfig = parse(
            br#"{"architecture":"amd64","os":"linux","x":1,
                "config":{"Env":["A=1"],"Cmd":["sh"],"WorkingDir":"/w","User":"1:2"},
                "rootfs":{"type":"layers","diff_ids":["sha256:ab"]}}"#,
            "config",
        )
        .expect("parse");
        let run = c.config.expect("run config");
        assert_eq!(run.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(run.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn a_manifest_needs_a_config() {
        let err =
            parse::<Manifest>(br#"{"layers":[]}"#, "manifest sha256:x").expect_err("no config");
        assert!(
            err.to_string()
                .starts_with("invalid manifest sha256:x: missing field `config`"),
            "{err}"
        );
    }
}
