//! Acting as the sandbox user for file system calls.
//!
//! Linux keeps a file system uid/gid per thread: `setfsuid(2)` and
//! `setfsgid(2)` change only the calling thread, and so does the raw
//! `setgroups` system call (glibc's wrapper would change every thread, so
//! it is not used). With a non-zero fsuid the kernel also drops the file
//! capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, ...) from this thread's
//! effective set, so permission checks are exactly those of the sandbox
//! user, while the agent's other threads stay root. New files are owned by
//! the sandbox user.

use std::io;

/// A thread's file system identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// File system uid.
    pub uid: u32,
    /// File system gid (also the only group).
    pub gid: u32,
}

/// Restores the thread's previous identity on drop.
#[derive(Debug)]
pub struct AsUser {
    prev: Identity,
    prev_groups: Vec<libc::gid_t>,
}

/// Most supplementary groups saved (the agent has none or a few).
const MAX_GROUPS: usize = 256;

/// Switches the calling thread to `id` and checks that the kernel took it.
/// Fails (and restores what it changed) when the agent lacks the privilege.
pub fn become_user(id: Identity) -> io::Result<AsUser> {
    let mut groups = vec![0 as libc::gid_t; MAX_GROUPS];
    // SAFETY: the buffer holds MAX_GROUPS gids and outlives the call.
    let n = unsafe { libc::getgroups(MAX_GROUPS as libc::c_int, groups.as_mut_ptr()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    groups.truncate(n);
    let guard = AsUser {
        prev: Identity {
            uid: current_fsuid(),
            gid: current_fsgid(),
        },
        prev_groups: groups,
    };
    set_groups(&[id.gid])?;
    // SAFETY: setfsgid/setfsuid take plain integers and change only this
    // thread's credentials; they report failure only through the check
    // below.
    unsafe {
        libc::setfsgid(id.gid);
        libc::setfsuid(id.uid);
    }
    if current_fsgid() != id.gid || current_fsuid() != id.uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot switch to uid {} gid {}", id.uid, id.gid),
        ));
    }
    Ok(guard)
}

/// `setfsuid(-1)` fails and returns the current value.
fn current_fsuid() -> u32 {
    // SAFETY: an invalid id changes nothing; it only queries.
    let v = unsafe { libc::setfsuid(u32::MAX) };
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn current_fsgid() -> u32 {
    // SAFETY: as in `current_fsuid`.
    let v = unsafe { libc::setfsgid(u32::MAX) };
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The raw system call: this thread only.
fn set_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid gid slice that
    // outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // SAFETY: as in `become_user`; the thread is still privileged
        // (only file capabilities were dropped), so restoring works.
        unsafe {
            libc::setfsuid(self.prev.uid);
            libc::setfsgid(self.prev.gid);
        }
        // The connection thread ends after one operation, so even a failed
        // restore cannot leak into another request.
        let _ = set_groups(&self.prev_groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_is_per_thread_and_restored() {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        let before = (current_fsuid(), current_fsgid());
        let id = Identity {
            uid: 1000,
            gid: 1000,
        };
        if euid != 0 {
            // Unprivileged: the switch must fail and change nothing.
            become_user(id).expect_err("unprivileged switch");
            assert_eq!((current_fsuid(), current_fsgid()), before);
            return;
        }
        let secret = std::env::temp_dir().join(format!("kiln-files-id-{}", std::process::id()));
        std::fs::write(&secret, b"x").expect("write");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        // A thread started before the switch (new threads inherit the
        // creator's credentials).
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = wait.recv();
            (current_fsuid(), current_fsgid())
        });
        {
            let _guard = become_user(id).expect("switch");
            assert_eq!((current_fsuid(), current_fsgid()), (1000, 1000));
            go.send(()).expect("send");
            let other = other.join().expect("thread");
            assert_eq!(other, before, "other threads keep their identity");
            let err = std::fs::read(&secret).expect_err("root-only file");
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        }
        std::fs::read(&secret).expect("readable again");
        let _ = std::fs::remove_file(&secret);
        assert_eq!((current_fsuid(), current_fsgid()), before);
    }
}
