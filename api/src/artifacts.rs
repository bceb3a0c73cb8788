//! Finding the kiln-vmm binary and the guest kernel and initramfs.
//!
//! Lookup order: an explicit path, then `$KILN_ARTIFACTS/{bin,guest}/...`,
//! then the layout `tools/build-artifacts` stages (`<dir of this exe>/kiln-vmm`
//! and `<dir of this exe>/../guest/...`).

use std::path::{Path, PathBuf};

/// A required file that could not be found.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} not found (looked in: {looked}); build it with tools/build-artifacts or pass its path"
)]
pub struct NotFound {
    /// What was looked for.
    pub what: &'static str,
    /// Where it was looked for.
    pub looked: String,
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

fn find(what: &'static str, explicit: Option<&Path>, rel: &str) -> Result<PathBuf, NotFound> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else {
        if let Some(dir) = std::env::var_os("KILN_ARTIFACTS") {
            candidates.push(PathBuf::from(dir).join(rel));
        }
        if let Some(dir) = exe_dir() {
            candidates.push(dir.join("..").join(rel));
            if let Some(name) = Path::new(rel).file_name() {
                candidates.push(dir.join(name));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| NotFound {
            what,
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The `kiln-vmm` binary.
pub fn vmm_binary(explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    find("kiln-vmm binary", explicit, "bin/kiln-vmm")
}

/// The guest kernel (vmlinux).
pub fn kernel(explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    find("guest kernel", explicit, "guest/vmlinux")
}

/// The guest initramfs.
pub fn initramfs(explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    find("guest initramfs", explicit, "guest/initramfs.cpio")
}

/// The `python-node` runtime image (erofs).
pub fn runtime_image(explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    find("runtime image", explicit, "guest/python-node.erofs")
}
