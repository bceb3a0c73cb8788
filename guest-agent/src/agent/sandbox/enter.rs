//! Entering the sandbox from a forked child, between `fork` and `exec`:
//! join the exec's cgroup, `chroot` into the sandbox root, drop to the
//! sandbox user, set umask and working directory.
//!
//! [`Entry::enter`] runs in the `pre_exec` hook of a child forked from a
//! multi-threaded process, so it only makes raw, async-signal-safe system
//! calls on data prepared before the fork: no allocation, no locks.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use thiserror::Error;

/// The sandbox user's uid and gid.
pub const SANDBOX_UID: u32 = 1000;
/// The sandbox user's home, inside the sandbox root.
pub const SANDBOX_HOME: &str = "/home/sandbox";
/// `PATH` of sandboxed programs whose environment has none: the user's own
/// bin directories first (where `pip install` and `npm install -g` put
/// commands, as the runtime image's /etc/pip.conf and /etc/npmrc set them
/// up), then the system's.
pub const SANDBOX_PATH: &str =
    "/home/sandbox/.local/bin:/home/sandbox/.npm-global/bin:/usr/local/bin:/usr/bin:/bin";

/// A path cannot be handed to the kernel.
#[derive(Debug, Error)]
#[error("{0} contains a NUL byte")]
pub struct NulError(&'static str);

/// Everything the child needs, as C strings made before the fork.
#[derive(Debug, Clone)]
pub struct Entry {
    root: CString,
    home: CString,
    cwd: Option<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    cgroup_procs: Option<RawFd>,
}

impl Entry {
    /// Prepares an entry into `root` as the sandbox user. `cwd` is
    /// resolved inside the root, relative ones from the home directory;
    /// `cgroup_procs` is an open `cgroup.procs` to join first.
    pub fn new(
        root: &Path,
        cwd: Option<&str>,
        cgroup_procs: Option<RawFd>,
    ) -> Result<Self, NulError> {
        let c = |b: &[u8], what| CString::new(b).map_err(|_| NulError(what));
        Ok(Self {
            root: c(root.as_os_str().as_bytes(), "sandbox root")?,
            home: c(SANDBOX_HOME.as_bytes(), "home")?,
            cwd: cwd.map(|d| c(d.as_bytes(), "cwd")).transpose()?,
            uid: SANDBOX_UID,
            gid: SANDBOX_UID,
            cgroup_procs,
        })
    }

    /// Runs in the forked child. Order matters: the cgroup and `chroot`
    /// need root; the working directory is entered as the user, so its
    /// permissions apply.
    pub fn enter(&self) -> io::Result<()> {
        if let Some(fd) = self.cgroup_procs {
            // SAFETY: writes one byte from a static to an fd the parent
            // keeps open until spawn returns.
            check(unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as libc::c_int)?;
        }
        // SAFETY: NUL-terminated strings owned by `self`.
        check(unsafe { libc::chroot(self.root.as_ptr()) })?;
        // SAFETY: a NUL-terminated static string.
        check(unsafe { libc::chdir(c"/".as_ptr()) })?;
        // SAFETY: an empty list: the pointer is never read.
        check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setgid(self.gid) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setuid(self.uid) })?;
        // No way back to root through set-uid files.
        // SAFETY: integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        // No core files filling the overlay.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `no_core` is a valid rlimit that outlives the call.
        check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) })?;
        // SAFETY: integer argument only; umask cannot fail.
        unsafe { libc::umask(0o022) };
        // A missing home is not fatal: stay in "/".
        // SAFETY: NUL-terminated string owned by `self`.
        unsafe { libc::chdir(self.home.as_ptr()) };
        if let Some(cwd) = &self.cwd {
            // SAFETY: NUL-terminated string owned by `self`.
            check(unsafe { libc::chdir(cwd.as_ptr()) })?;
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_rejected_before_any_fork() {
        assert!(Entry::new(Path::new("/"), Some("a\0b"), None).is_err());
        let e = Entry::new(Path::new("/r"), Some("rel"), Some(5)).expect("valid");
        assert_eq!(e.root.as_bytes(), b"/r");
        assert_eq!(e.uid, 1000);
        assert_eq!(e.cgroup_procs, Some(5));
    }

    #[test]
    fn sandbox_path_starts_with_the_users_bins_under_home() {
        let dirs: Vec<&str> = SANDBOX_PATH.split(':').collect();
        assert_eq!(
            dirs[..2],
            [
                format!("{SANDBOX_HOME}/.local/bin"),
                format!("{SANDBOX_HOME}/.npm-global/bin")
            ]
        );
        assert!(dirs.contains(&"/usr/bin") && dirs.contains(&"/bin"));
    }
}
