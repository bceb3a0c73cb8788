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

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Where the tree is bind-mounted before it is moved over `/`.
const STAGING: &str = "/tmp/kiln-bench-root";

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL"))
}

/// Does the move when this runs in the testbed (`KILN_TESTBED`); elsewhere
/// the root is a real filesystem already and nothing changes. Call before
/// any thread starts.
pub fn off_the_initramfs() -> io::Result<()> {
    if std::env::var_os("KILN_TESTBED").is_none() {
        return Ok(());
    }
    let cwd = std::env::current_dir()?;
    std::fs::create_dir_all(STAGING)?;
    let staging = c_path(Path::new(STAGING))?;
    let cwd_c = c_path(&cwd)?;
    // SAFETY: plain syscalls on NUL-terminated paths that outlive them; the
    // process is single-threaded here, so the namespace and root apply to
    // every thread and child started later.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private",
        )?;
        check(
            libc::mount(
                c"/".as_ptr(),
                staging.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            "bind-mounting /",
        )?;
        check(libc::chdir(staging.as_ptr()), "entering the bind")?;
        check(
            libc::mount(
                c".".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ),
            "moving the bind over /",
        )?;
        check(libc::chroot(c".".as_ptr()), "chroot into the bind")?;
        check(
            libc::chdir(cwd_c.as_ptr()),
            "returning to the working directory",
        )?;
    }
    Ok(())
}
