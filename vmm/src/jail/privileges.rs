//! Giving up privileges once the VM is built: the unprivileged ids, every
//! capability, `no_new_privs`, and the rlimits.

use std::io;

use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// Descriptors the VMM may hold: every vsock connection and pending host
/// client (`devices::virtio::vsock`) plus its own handful.
pub const MAX_OPEN_FILES: u64 = crate::devices::virtio::vsock::MAX_CONNECTIONS as u64 + 512;

/// Empties the capability bounding set. libc rather than rustix: rustix's
/// `Capability` enum cannot name capabilities newer than itself, and the
/// loop must reach the kernel's last one (it ends on EINVAL).
fn clear_bounding_set() -> io::Result<()> {
    clear_bounding_set_but(None)
}

/// Empties the bounding set except `keep`.
fn clear_bounding_set_but(keep: Option<libc::c_int>) -> io::Result<()> {
    for cap in 0..64 {
        if Some(cap) == keep {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINVAL) if cap > 0 => Ok(()),
                _ => Err(err),
            };
        }
    }
    Ok(())
}

/// Switches the (single-threaded) process to `uid`/`gid` with no
/// supplementary groups; the kernel clears every capability.
pub fn switch_ids(uid: u32, gid: u32) -> io::Result<()> {
    clear_bounding_set()?;
    // The calling process is single-threaded here, so the per-thread
    // syscalls below cover the whole process.
    let (uid, gid) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    Ok(())
}

/// Keeps the ids but drops every capability (the process is unprivileged
/// outside its user namespace and needs none inside it any more).
pub fn drop_capabilities() -> io::Result<()> {
    clear_bounding_set()?;
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// `CAP_KILL`'s number (linux/capability.h).
pub const CAP_KILL: libc::c_int = 5;

/// The supervisor's capabilities: only CAP_KILL, to signal a VMM that no
/// longer runs as its uid. Removing the VMM's socket and cgroup needs none
/// (it owns both directories).
pub fn keep_only_kill() -> io::Result<()> {
    clear_bounding_set_but(Some(CAP_KILL))?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::KILL,
            permitted: CapabilitySet::KILL,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// No exec can ever grant privileges again (seccomp needs it too).
pub fn set_no_new_privs() -> io::Result<()> {
    Ok(rustix::thread::set_no_new_privs(true)?)
}

/// Caps descriptors at [`MAX_OPEN_FILES`] (or lower, if the caller's limit
/// was lower), and forbids core dumps (they would hold guest memory) and
/// locked memory.
pub fn set_rlimits() -> io::Result<()> {
    let current = rustix::process::getrlimit(Resource::Nofile);
    let nofile = current
        .maximum
        .map_or(MAX_OPEN_FILES, |m| m.min(MAX_OPEN_FILES));
    rustix::process::setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(nofile),
            maximum: Some(nofile),
        },
    )?;
    for resource in [Resource::Core, Resource::Memlock] {
        rustix::process::setrlimit(
            resource,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )?;
    }
    Ok(())
}

/// The process dies with SIGKILL when its parent (the supervisor) does.
/// The kernel resets this on every id change, so it is set again after.
pub fn die_with_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        rustix::process::Signal::KILL,
    ))?)
}
