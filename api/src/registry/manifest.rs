//! `template.json`: what a registry template is (its image by content
//! hash, its shape, its defaults) and how it was built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::image::ImageFormat;
use super::RegistryError;
use crate::model::EgressSpec;
use crate::template::Template;

/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a build supplies besides the image: the template's shape and the
/// defaults of its sandboxes (an OCI image's config maps onto the last
/// five).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// The per-sandbox writable disk, MiB (none: the default overlay).
    #[serde(default)]
    pub disk_mib: Option<u32>,
    /// The egress allowlist of its sandboxes unless a create narrows it
    /// (none: no network).
    #[serde(default)]
    pub egress: Option<EgressSpec>,
    /// Guest kernel (none: the staged artifacts').
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (none: the staged artifacts').
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Environment of every exec (under what a create or exec sets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of execs unless a create or exec names one.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The image's user (recorded; execs run as the sandbox user).
    #[serde(default)]
    pub user: Option<String>,
    /// The image's entrypoint (recorded; kiln runs the commands it is
    /// given).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's default command (recorded, as the entrypoint).
    #[serde(default)]
    pub cmd: Vec<String>,
}

impl Default for TemplateSpec {
    fn default() -> Self {
        let (vcpus, mem_mib) = crate::template::builtin_shape(crate::template::DEFAULT_TEMPLATE);
        TemplateSpec {
            vcpus,
            mem_mib,
            disk_mib: None,
            egress: None,
            kernel: None,
            initramfs: None,
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        }
    }
}

impl TemplateSpec {
    /// Checks the values serde cannot.
    pub fn check(&self) -> Result<(), RegistryError> {
        let bad = |m: String| Err(RegistryError::BadSpec(m));
        if self.vcpus == 0 || self.vcpus > kiln_vmm::config::MAX_VCPUS {
            return bad(format!(
                "vcpus must be 1..={}, got {}",
                kiln_vmm::config::MAX_VCPUS,
                self.vcpus
            ));
        }
        if u64::from(self.mem_mib) < kiln_vmm::config::MIN_MEM_MIB {
            return bad(format!(
                "mem_mib must be at least {}, got {}",
                kiln_vmm::config::MIN_MEM_MIB,
                self.mem_mib
            ));
        }
        if let Some(mib) = self
            .disk_mib
            .filter(|&m| m < crate::vm_process::disk::MIN_DISK_MIB)
        {
            return bad(format!(
                "disk_mib must be at least {} MiB, got {mib}",
                crate::vm_process::disk::MIN_DISK_MIB
            ));
        }
        if let Some(spec) = &self.egress {
            crate::egress::Allowlist::parse(spec)
                .map_err(|e| RegistryError::BadSpec(e.to_string()))?;
        }
        crate::core::check_env(&self.env).map_err(|e| RegistryError::BadSpec(e.to_string()))?;
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return bad(format!("working_dir must be absolute, got {dir:?}"));
            }
        }
        Ok(())
    }
}

/// How a template was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// What it was made from (`image:PATH`, `debian-packages:a,b`, ...).
    pub source: String,
    /// When, ms since the Unix epoch.
    pub built_at_ms: u64,
    /// The kiln version that registered it.
    pub kiln_version: String,
}

/// A registry template's `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The template's name (its directory's).
    pub name: String,
    /// The image's file name in the template directory (content-addressed:
    /// `<sha256>.<format>`).
    pub image: String,
    /// Hex SHA-256 of the image.
    pub image_sha256: String,
    /// The image's size, bytes.
    pub image_bytes: u64,
    /// The image's file system.
    pub image_format: ImageFormat,
    /// Shape and defaults.
    #[serde(flatten)]
    pub spec: TemplateSpec,
    /// How it was built.
    pub build: BuildInfo,
    /// Hex SHA-256 of the manifest's bytes as read: changes with every
    /// rebuild (pools roll when it does).
    #[serde(skip)]
    pub revision: String,
}

impl Manifest {
    /// Parses a manifest read from `path`, checking what serde cannot.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        // The version first, so a newer format says so instead of naming
        // an unknown field.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if version.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format_version {} (this kiln reads {FORMAT_VERSION})",
                version.format_version
            )));
        }
        let mut m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let dir_name = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if m.name != dir_name {
            return Err(corrupt(format!(
                "it names template {:?} but lives in {dir_name:?}",
                m.name
            )));
        }
        let expected = format!("{}.{}", m.image_sha256, m.image_format.extension());
        if m.image != expected || m.image_sha256.len() != 64 {
            return Err(corrupt(format!(
                "image {:?} is not the content-addressed name {expected:?}",
                m.image
            )));
        }
        m.spec.check().map_err(|e| corrupt(e.to_string()))?;
        m.revision = super::image::hex(&sha2::Sha256::digest(bytes));
        Ok(m)
    }

    /// The template that boots it; `dir` is its directory. Without
    /// `needs_files` (a launcher that boots no kernel) missing kernel and
    /// initramfs are fine.
    pub fn template(&self, dir: &Path, needs_files: bool) -> Result<Template, RegistryError> {
        let image = dir.join(&self.image);
        let (kernel, initramfs) = if needs_files {
            if !image.is_file() {
                return Err(RegistryError::Corrupt {
                    path: dir.join(super::MANIFEST),
                    reason: format!("its image {} is missing", image.display()),
                });
            }
            (
                crate::artifacts::kernel(self.spec.kernel.as_deref())?,
                crate::artifacts::initramfs(self.spec.initramfs.as_deref())?,
            )
        } else {
            (
                self.spec.kernel.clone().unwrap_or_default(),
                self.spec.initramfs.clone().unwrap_or_default(),
            )
        };
        Ok(Template {
            name: self.name.clone(),
            kernel,
            initramfs,
            image: Some(image),
            vcpus: self.spec.vcpus,
            mem_mib: self.spec.mem_mib,
            kernel_args: String::new(),
            huge_pages: true,
            disk_mib: self.spec.disk_mib,
            env: self.spec.env.clone(),
            working_dir: self.spec.working_dir.clone(),
            revision: Some(self.revision.clone()),
        })
    }
}
