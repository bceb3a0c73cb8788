//! The jail's root: a small tmpfs holding only the bound paths
//! ([`super::paths`]), made the process's root with `pivot_root` (or, where
//! the host's root is the initramfs, which `pivot_root` cannot leave, moved
//! over `/` and entered with `chroot`), then remounted read-only.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, StatVfsMountFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::paths::{Access, JailPath};

/// Existing directories the new root may be assembled on (it is mounted
/// over one of them in the private mount namespace; the host sees nothing).
const STAGING: [&str; 4] = ["/tmp", "/mnt", "/run", "/var/tmp"];

/// How the process entered its new root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSwitch {
    /// `pivot_root`, the old root detached.
    PivotRoot,
    /// The host root is the initramfs: moved over `/` and `chroot`ed.
    Chroot,
}

/// Why the root could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct MountError {
    step: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn fail<E: Into<io::Error>>(step: &'static str, path: &Path) -> impl FnOnce(E) -> MountError {
    let path = path.to_owned();
    move |e| MountError {
        step,
        path,
        source: e.into(),
    }
}

/// Flags a read-only bind remount must keep: in a user namespace the
/// kernel refuses to clear the source mount's locked flags.
fn kept_flags(path: &Path) -> MountFlags {
    let Ok(st) = rustix::fs::statvfs(path) else {
        return MountFlags::empty();
    };
    let mut flags = MountFlags::empty();
    for (st_flag, flag) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(st_flag) {
            flags |= flag;
        }
    }
    flags
}

/// Creates the empty file or directory a bind mount covers, unless the
/// path already exists (below an already bound host directory).
fn make_mountpoint(target: &Path, dir: bool) -> io::Result<()> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    if dir {
        fs::create_dir(target)
    } else {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
    }
}

/// Binds `source` (an `O_PATH` descriptor of the host path) at `target`.
fn bind(source: &OwnedFd, target: &Path, access: Access) -> Result<(), MountError> {
    let via = format!("/proc/self/fd/{}", source.as_raw_fd());
    if let Err(e) = rustix::mount::mount_bind(via.as_str(), target) {
        // A directory with (locked) mounts below it binds only recursively.
        if e != rustix::io::Errno::INVAL {
            return Err(fail("binding", target)(e));
        }
        rustix::mount::mount_bind_recursive(via.as_str(), target)
            .map_err(fail("binding", target))?;
    }
    let mut flags = kept_flags(target) | MountFlags::BIND | MountFlags::NOSUID;
    match access {
        Access::ReadOnly => flags |= MountFlags::RDONLY | MountFlags::NOEXEC,
        Access::ReadWrite => flags |= MountFlags::NOEXEC,
        Access::Device => {}
    }
    rustix::mount::mount_remount(target, flags, "").map_err(fail("restricting", target))
}

/// Builds the jail root from `paths` and switches into it. The process must
/// be in its own mount namespace.
pub fn enter_root(paths: &[JailPath]) -> Result<RootSwitch, MountError> {
    let root = Path::new("/");
    rustix::mount::mount_change(
        root,
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(fail("making private", root))?;
    // Descriptors first: the staging tmpfs may hide some of the sources.
    let sources = paths
        .iter()
        .map(|p| {
            rustix::fs::open(&p.path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .map_err(fail("opening", &p.path))
        })
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let is_dir = sources
        .iter()
        .map(|fd| {
            rustix::fs::fstat(fd)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
        })
        .collect::<Vec<bool>>();
    let staging = STAGING
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| MountError {
            step: "finding a staging directory for",
            path: PathBuf::from(STAGING[0]),
            source: io::ErrorKind::NotFound.into(),
        })?;
    rustix::mount::mount(
        "kiln-jail",
        staging,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=0755,size=1m"),
    )
    .map_err(fail("mounting a tmpfs on", staging))?;
    for ((p, source), is_dir) in paths.iter().zip(&sources).zip(is_dir) {
        let target = staging.join(p.path.strip_prefix(root).unwrap_or(&p.path));
        make_mountpoint(&target, is_dir).map_err(fail("creating", &target))?;
        bind(source, &target, p.access)?;
    }
    drop(sources);
    rustix::process::chdir(staging).map_err(fail("entering", staging))?;
    let switch = match rustix::process::pivot_root(".", ".") {
        Ok(()) => {
            // The old root now sits on top of the new one: detach it.
            rustix::mount::unmount(".", UnmountFlags::DETACH)
                .map_err(fail("detaching the old root above", staging))?;
            RootSwitch::PivotRoot
        }
        Err(rustix::io::Errno::INVAL) => {
            rustix::mount::mount_move(".", root).map_err(fail("moving to /", staging))?;
            rustix::process::chroot(".").map_err(fail("chroot to", staging))?;
            RootSwitch::Chroot
        }
        Err(e) => return Err(fail("pivot_root to", staging)(e)),
    };
    rustix::process::chdir(root).map_err(fail("entering", root))?;
    rustix::mount::mount_remount(
        root,
        MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC,
        "",
    )
    .map_err(fail("making read-only", root))?;
    Ok(switch)
}
