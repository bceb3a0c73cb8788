//! Moves this process's root off the testbed's initramfs, for Firecracker's
//! jailer: it `pivot_root`s into its chroot, which Linux refuses while the
//! caller's root is the initramfs (rootfs has no parent mount). kiln-vmm's
//! jail falls back to moving its root and `chroot`; the jailer does not.
//!
//! In a new mount namespace the whole tree is bind-mounted, the bind moved
//! over `/` and entered: the same files at the same paths, on a mount that
//! has a parent, as on a host whose root is a real filesystem. Every child
//! started afterwards (kiln-vmm, Firecracker, the jailer) inherits it, so
//! kiln's jail then takes its `pivot_root` path too.

use std::io;

use rustix::mount::{mount_bind_recursive, mount_change, mount_move, MountPropagationFlags};
use rustix::thread::UnshareFlags;

/// Where the tree is bind-mounted before it is moved over `/`.
const STAGING: &str = "/tmp/kiln-bench-root";

fn step(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> io::Error {
    move |e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }
}

/// Does the move when this runs in the testbed (`KILN_TESTBED`); elsewhere
/// the root is a real filesystem already and nothing changes. Call before
/// any thread starts, so the namespace and root apply to every thread and
/// child started later.
pub fn off_the_initramfs() -> io::Result<()> {
    if std::env::var_os("KILN_TESTBED").is_none() {
        return Ok(());
    }
    let cwd = std::env::current_dir()?;
    std::fs::create_dir_all(STAGING)?;
    // SAFETY: only CLONE_NEWNS (never CLONE_FILES), so no thread is left
    // with descriptors from another table.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
        .map_err(step("unshare(CLONE_NEWNS)"))?;
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(step("making / private"))?;
    mount_bind_recursive("/", STAGING).map_err(step("bind-mounting /"))?;
    rustix::process::chdir(STAGING).map_err(step("entering the bind"))?;
    mount_move(".", "/").map_err(step("moving the bind over /"))?;
    rustix::process::chroot(".").map_err(step("chroot into the bind"))?;
    rustix::process::chdir(&cwd).map_err(step("returning to the working directory"))?;
    Ok(())
}
