//! The sandbox's root file system (guest only): the read-only runtime image
//! from `/dev/vda` (erofs, else ext4) under an overlay whose writable layer
//! is a size-bounded tmpfs, or the ext4 file system of a writable disk
//! (`kiln.overlay_dev`), with `/proc`, `/dev`, `/dev/pts`, `/dev/shm`,
//! `/tmp` (a tmpfs, or on the disk) and a read-only `/sys` inside it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::super::config::Config;

/// The runtime image's block device.
pub const IMAGE_DEVICE: &str = "/dev/vda";
/// Where the image is mounted read-only.
pub const IMAGE_DIR: &str = "/run/kiln/image";
/// The tmpfs holding the overlay's upper and work directories.
pub const RW_DIR: &str = "/run/kiln/rw";
/// The overlay: the sandbox's root.
pub const ROOT_DIR: &str = "/run/kiln/root";

/// File systems tried for the image, in order.
const IMAGE_FS: &[&str] = &["erofs", "ext4"];
/// Size cap of the sandbox's `/dev/shm` (MiB).
const SHM_MIB: u64 = 64;

/// Building the sandbox root failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The image is not erofs or ext4, or the device is unusable.
    #[error("cannot mount {IMAGE_DEVICE} read-only as {}", IMAGE_FS.join(" or "))]
    Image(#[source] io::Error),
    /// Another mount failed.
    #[error("cannot mount {fstype} on {}", target.display())]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating a directory failed.
    #[error("cannot create {}", .0.display())]
    Mkdir(PathBuf, #[source] io::Error),
}

/// What [`setup_image_root`] built.
#[derive(Debug)]
pub struct ImageRoot {
    /// The sandbox root ([`ROOT_DIR`]).
    pub root: PathBuf,
    /// File system of the image.
    pub fstype: &'static str,
    /// The writable layer's disk, when it is one (else a tmpfs).
    pub disk: Option<String>,
    /// Mounts inside the root that failed (the root is still usable).
    pub failed: Vec<MountError>,
}

/// Whether a runtime image is attached.
pub fn image_present() -> bool {
    Path::new(IMAGE_DEVICE).exists()
}

/// Mounts image, tmpfs and overlay, then the kernel file systems inside
/// the overlay. Stops at the first failure; the caller falls back to the
/// initramfs root.
pub fn setup_image_root(config: &Config) -> Result<ImageRoot, MountError> {
    let fstype = mount_image()?;
    let rw = Path::new(RW_DIR);
    mkdir(rw)?;
    let mut failed = Vec::new();
    let disk = match &config.overlay_dev {
        Some(dev) => match mount_disk(dev, rw) {
            Ok(()) => Some(dev.clone()),
            Err(e) => {
                // The sandbox still gets a root, in memory; the note says why.
                failed.push(e);
                None
            }
        },
        None => None,
    };
    if disk.is_none() {
        let size = format!("size={}m,mode=0755", config.overlay_mib);
        mount_or(
            "tmpfs",
            rw,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            &size,
        )?;
    }
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let root = Path::new(ROOT_DIR);
    mkdir(root)?;
    let opts = format!(
        "lowerdir={IMAGE_DIR},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    // nosuid: set-uid files in the image never give the sandbox root.
    mount_or(
        "overlay",
        root,
        "overlay",
        libc::MS_NOSUID | libc::MS_NODEV,
        &opts,
    )?;
    failed.extend(mount_inner(root, config, disk.is_some()));
    Ok(ImageRoot {
        root: root.to_owned(),
        fstype,
        disk,
        failed,
    })
}

/// Mounts the writable disk's ext4 file system (made empty by the host) on
/// `dir`. `noinit_itable`: the host left the inode tables unzeroed on
/// purpose (the disk is sparse); they are never needed zeroed here.
fn mount_disk(dev: &str, dir: &Path) -> Result<(), MountError> {
    let source = format!("/dev/{dev}");
    mount(
        &source,
        dir,
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME,
        "noinit_itable,errors=remount-ro",
    )
    .map_err(|source| MountError::Mount {
        fstype: "ext4",
        target: dir.to_owned(),
        source,
    })
}

fn mount_image() -> Result<&'static str, MountError> {
    let dir = Path::new(IMAGE_DIR);
    mkdir(dir)?;
    let mut last = io::Error::from(io::ErrorKind::Unsupported);
    for fstype in IMAGE_FS {
        match mount(
            IMAGE_DEVICE,
            dir,
            fstype,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            "",
        ) {
            Ok(()) => return Ok(fstype),
            Err(e) => last = e,
        }
    }
    Err(MountError::Image(last))
}

/// Kernel file systems inside the sandbox root; returns the failures (each
/// step is independent). With a writable disk, `/tmp` is a directory on
/// it rather than a tmpfs in memory.
fn mount_inner(root: &Path, config: &Config, on_disk: bool) -> Vec<MountError> {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let tmp = format!("size={}m,mode=1777", config.overlay_mib);
    let shm = format!("size={SHM_MIB}m,mode=1777");
    let steps: [(&str, &str, &'static str, libc::c_ulong, &str); 6] = [
        ("proc", "proc", "proc", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("dev", "devtmpfs", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "dev/pts",
            "devpts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        ("dev/shm", "tmpfs", "tmpfs", nosuid_nodev, &shm),
        ("tmp", "tmpfs", "tmpfs", nosuid_nodev, &tmp),
        (
            "sys",
            "sysfs",
            "sysfs",
            nosuid_nodev | libc::MS_NOEXEC | libc::MS_RDONLY,
            "",
        ),
    ];
    let mut failed = Vec::new();
    for (dir, source, fstype, flags, data) in steps {
        let target = root.join(dir);
        if on_disk && dir == "tmp" {
            if let Err(e) = mkdir(&target).and_then(|()| sticky_world_writable(&target)) {
                failed.push(e);
            }
            continue;
        }
        if let Err(e) = mkdir(&target).and_then(|()| mount_or(source, &target, fstype, flags, data))
        {
            failed.push(e);
        }
    }
    failed
}

/// `chmod 1777`, as a `/tmp` must be.
fn sticky_world_writable(dir: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))
        .map_err(|e| MountError::Mkdir(dir.to_owned(), e))
}

/// `mkdir -p`.
pub fn mkdir(path: &Path) -> Result<(), MountError> {
    fs::create_dir_all(path).map_err(|e| MountError::Mkdir(path.to_owned(), e))
}

fn mount_or(
    source: &str,
    target: &Path,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(|source| MountError::Mount {
        fstype,
        target: target.to_owned(),
        source,
    })
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |b: &[u8]| CString::new(b).map_err(io::Error::other);
    let (source, target, fstype, data) = (
        c(source.as_bytes())?,
        c(target.as_os_str().as_bytes())?,
        c(fstype.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: all four pointers are NUL-terminated strings that live across
    // the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_rejects_interior_nul_without_calling_the_kernel() {
        let err = mount("a\0b", Path::new("/x"), "tmpfs", 0, "").expect_err("nul");
        assert_eq!(err.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn sandbox_paths_nest_under_run_kiln() {
        for p in [IMAGE_DIR, RW_DIR, ROOT_DIR] {
            assert!(Path::new(p).starts_with("/run/kiln"), "{p}");
        }
    }
}
