//! The files root and path resolution inside it with `openat2(2)`.
//!
//! `RESOLVE_IN_ROOT` makes the kernel treat the root fd as `/` for the
//! whole lookup: absolute paths, `..` and absolute symlink targets are
//! resolved as if the process were chrooted there, so no request path can
//! name anything outside. `RESOLVE_NO_MAGICLINKS` refuses `/proc/*/fd`-style
//! links, which could otherwise jump anywhere.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Retries of a lookup the kernel aborted with `EAGAIN` (a concurrent
/// rename inside the root); bounded so a hostile program renaming in a
/// loop cannot pin the handler.
const EAGAIN_RETRIES: usize = 16;

/// An open files root.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `dir` (as the agent, before any identity switch).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(Self { fd: fd.into() })
    }

    /// Opens `path` (absolute or not, always inside the root) with
    /// `flags | O_CLOEXEC`; `mode` is used with `O_CREAT`.
    pub fn open_in(&self, path: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        // SAFETY: all-zero is a valid `open_how` (plain integers).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0);
        how.mode = u64::from(mode);
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let mut tries = 0;
        loop {
            // SAFETY: `path` is NUL-terminated, `how` is a valid open_how
            // and the size passed is its size; both outlive the call. The
            // root fd is open.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if rc >= 0 {
                let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::other("bad fd"))?;
                // SAFETY: openat2 returned a new fd that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                _ => return Err(err),
            }
        }
    }

    /// Opens the directory `path` for `*at` calls (`O_PATH`: needs search
    /// permission only).
    pub fn open_dir(&self, path: &CStr) -> io::Result<OwnedFd> {
        self.open_in(path, libc::O_PATH | libc::O_DIRECTORY, 0)
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lookups_stay_inside_the_root() {
        let base = std::env::temp_dir().join(format!("kiln-files-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root_dir = base.join("root");
        std::fs::create_dir_all(root_dir.join("etc")).expect("mkdir");
        std::fs::write(root_dir.join("etc/passwd"), b"inside").expect("write");
        std::fs::write(base.join("secret"), b"outside").expect("write");
        std::os::unix::fs::symlink("/../../secret", root_dir.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../secret", root_dir.join("rel")).expect("symlink");
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root_dir.join("magic"))
            .expect("symlink");
        let root = Root::open(&root_dir).expect("open root");
        let read = |p: &CStr| -> io::Result<String> {
            let fd = root.open_in(p, libc::O_RDONLY, 0)?;
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s)?;
            Ok(s)
        };
        for p in [
            c"/etc/passwd",
            c"etc/passwd",
            c"../../../../etc/passwd",
            c"/../etc/../etc/passwd",
        ] {
            assert_eq!(read(p).expect("read"), "inside", "{p:?}");
        }
        for p in [c"abs", c"rel", c"../secret", c"/../secret"] {
            let err = read(p).expect_err("must not escape");
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{p:?}");
        }
        // /proc does not exist in the root, and magic links are refused
        // even where it does.
        assert!(read(c"magic").is_err());
        assert!(root.open_dir(c"/etc").is_ok());
        assert_eq!(
            root.open_dir(c"/etc/passwd")
                .expect_err("not a dir")
                .raw_os_error(),
            Some(libc::ENOTDIR)
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
