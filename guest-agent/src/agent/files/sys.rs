//! Thin, safe wrappers over the `*at` system calls the handlers use.
//!
//! Every name passed here is a single path component (no `/`, not `.` or
//! `..`; see `path`) relative to a directory fd that was itself resolved
//! inside the files root, so none of these calls can reach outside it.
//! Calls that could follow a symlink in the final component use
//! `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Converts a `-1` return into the thread's errno, retrying `EINTR`.
fn check(mut call: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        let rc = call();
        if rc != -1 {
            return Ok(rc);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir`
/// itself.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let flags = if name.is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: all-zero is a valid `stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `st` is a valid out pointer; both
    // outlive the call; the fd is open.
    check(|| unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    lstat_at(fd, c"")
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call; fd is open.
    check(|| unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

/// `unlinkat(dir, name, AT_REMOVEDIR if dir)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: as in `mkdir_at`.
    check(|| unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE if !replace)`.
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    replace: bool,
) -> io::Result<()> {
    let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
    // SAFETY: both names are NUL-terminated and outlive the call; the fds
    // are open.
    check(|| unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// Sets the permission bits of `name` in `dir` without following a
/// symlink (glibc does it through an `O_PATH` fd; a symlink is refused).
pub fn chmod_at_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: as in `mkdir_at`.
    check(|| unsafe {
        libc::fchmodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    check(|| unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}

/// `openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW, mode)` for a single
/// component.
pub fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `name` is NUL-terminated and outlives the call; fd is open.
    let fd = check(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `st_mode` says a file is.
pub fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// An open directory stream; closed on drop.
pub struct Dir {
    dir: std::ptr::NonNull<libc::DIR>,
}

impl Dir {
    /// Takes ownership of `fd` (an `O_RDONLY | O_DIRECTORY` fd).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory fd we own; on success the DIR
        // owns it.
        let dir = unsafe { libc::fdopendir(raw) };
        match std::ptr::NonNull::new(dir) {
            Some(dir) => Ok(Self { dir }),
            None => {
                let err = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so we still own `raw`.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(err)
            }
        }
    }

    /// The directory's fd, for `*at` calls on its entries.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the DIR is open for as long as `self` lives, and with it
        // its fd.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.dir.as_ptr())) }
    }

    /// The next entry's name and `d_type`, skipping `.` and `..`;
    /// `Ok(None)` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<(CString, u8)>> {
        loop {
            // SAFETY: errno is thread-local; readdir reports errors only
            // through it, so it is cleared first.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the DIR is open and used by this thread only.
            let ent = unsafe { libc::readdir64(self.dir.as_ptr()) };
            if ent.is_null() {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(0) | None => Ok(None),
                    Some(_) => Err(err),
                };
            }
            // SAFETY: readdir returned a valid entry whose `d_name` is
            // NUL-terminated; it stays valid until the next readdir on
            // this stream, and we copy it out before that.
            let (name, kind) = unsafe {
                (
                    CStr::from_ptr((*ent).d_name.as_ptr()).to_owned(),
                    (*ent).d_type,
                )
            };
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                return Ok(Some((name, kind)));
            }
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the DIR is open and closed exactly once, here.
        unsafe { libc::closedir(self.dir.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn dir_lists_names_and_at_calls_work() {
        let dir = std::env::temp_dir().join(format!("kiln-files-sys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let fd: OwnedFd = std::fs::File::open(&dir).expect("open").into();
        mkdir_at(fd.as_fd(), c"sub", 0o700).expect("mkdirat");
        assert!(mkdir_at(fd.as_fd(), c"sub", 0o700).is_err());
        let st = lstat_at(fd.as_fd(), c"sub").expect("stat");
        assert_eq!(file_type(&st), libc::S_IFDIR);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).expect("symlink");
        assert!(open_at(fd.as_fd(), c"link", libc::O_RDONLY, 0).is_err());
        assert!(chmod_at_nofollow(fd.as_fd(), c"link", 0o600).is_err());
        rename_at(fd.as_fd(), c"sub", fd.as_fd(), c"link", false).expect_err("noreplace");
        rename_at(fd.as_fd(), c"sub", fd.as_fd(), c"sub2", false).expect("rename");
        let mut names: Vec<_> = {
            let d = std::fs::File::open(&dir).expect("open").into();
            let mut d = Dir::new(d).expect("dir");
            std::iter::from_fn(|| d.next_entry().expect("readdir"))
                .map(|(n, _)| n.into_string().expect("utf8"))
                .collect()
        };
        names.sort();
        assert_eq!(names, ["link", "sub2"]);
        unlink_at(fd.as_fd(), c"sub2", true).expect("rmdir");
        unlink_at(fd.as_fd(), c"link", false).expect("unlink");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
