//! Templates: a named kernel + initramfs + runtime image + vCPUs + memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_vmm::config::{DriveConfig, VmConfig};

use crate::artifacts::{self, NotFound};

/// The template `kiln run` uses unless told otherwise.
pub const DEFAULT_TEMPLATE: &str = "python-node";

/// A resolved template: everything needed to boot a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Template name.
    pub name: String,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs (the agent).
    pub initramfs: PathBuf,
    /// Read-only runtime image attached as the first virtio-blk disk.
    pub image: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Extra guest kernel command line.
    pub kernel_args: String,
    /// Guest RAM on transparent huge pages when the host has them: faster
    /// boots, more resident memory for a booted VM (clones map their
    /// snapshot file either way).
    pub huge_pages: bool,
    /// A writable disk of this many MiB per VM (sparse, host-backed) as the
    /// sandbox's writable layer, instead of the tmpfs in guest memory.
    pub disk_mib: Option<u32>,
    /// Environment of every exec, under what a create or exec sets.
    pub env: BTreeMap<String, String>,
    /// Working directory of execs unless a create or exec names one.
    pub working_dir: Option<String>,
    /// A registry template's revision (its manifest's hash): VMs of
    /// another revision are retired from its pool.
    pub revision: Option<String>,
}

/// Errors resolving a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No such template.
    #[error("unknown template {0:?} (known: python-node, minimal)")]
    Unknown(String),
    /// One of its files is missing.
    #[error(transparent)]
    NotFound(#[from] NotFound),
}

/// Paths that override what the template would pick.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    /// Kernel path.
    pub kernel: Option<&'a Path>,
    /// Initramfs path.
    pub initramfs: Option<&'a Path>,
    /// Runtime image path.
    pub image: Option<&'a Path>,
}

/// Resolves template `name`: `python-node` (CPython 3, Node.js, bash on a
/// read-only erofs image, 512 MiB) or `minimal` (the initramfs's busybox only,
/// 256 MiB).
pub fn resolve(name: &str, o: &Overrides<'_>) -> Result<Template, TemplateError> {
    let kernel = artifacts::kernel(o.kernel)?;
    let initramfs = artifacts::initramfs(o.initramfs)?;
    let (vcpus, mem_mib) = builtin_shape(name);
    match name {
        "python-node" => Ok(Template {
            name: "python-node".into(),
            kernel,
            initramfs,
            image: Some(artifacts::runtime_image(o.image)?),
            vcpus,
            mem_mib,
            kernel_args: String::new(),
            huge_pages: true,
            disk_mib: None,
            env: BTreeMap::new(),
            working_dir: None,
            revision: None,
        }),
        "minimal" => Ok(Template {
            name: "minimal".into(),
            kernel,
            initramfs,
            image: o.image.map(Path::to_path_buf),
            vcpus,
            mem_mib,
            kernel_args: String::new(),
            huge_pages: true,
            disk_mib: None,
            env: BTreeMap::new(),
            working_dir: None,
            revision: None,
        }),
        other => Err(TemplateError::Unknown(other.to_string())),
    }
}

/// Names of the built-in templates.
pub const BUILTIN: [&str; 2] = ["python-node", "minimal"];

/// vCPUs and memory (MiB) of a built-in template.
pub fn builtin_shape(name: &str) -> (u8, u32) {
    match name {
        "python-node" => (1, 512),
        _ => (1, 256),
    }
}

impl Template {
    /// The VM config that boots this template (the runtime image read-only
    /// as /dev/vda).
    pub fn vm_config(&self) -> VmConfig {
        let mut c = VmConfig::new(&self.kernel);
        c.initramfs = Some(self.initramfs.clone());
        c.vcpus = self.vcpus;
        c.mem_mib = u64::from(self.mem_mib);
        c.cmdline_extra = self.kernel_args.clone();
        c.huge_pages = self.huge_pages;
        c.drives = self
            .image
            .iter()
            .map(|path| DriveConfig {
                path: path.clone(),
                read_only: true,
            })
            .collect();
        c
    }
}
