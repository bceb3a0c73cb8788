//! Namespaces and the user namespace's id maps.

use std::io;

use rustix::thread::UnshareFlags;

/// The namespaces besides user and pid: mounts, IPC, hostname, network.
pub const VIEW: UnshareFlags = UnshareFlags::NEWNS
    .union(UnshareFlags::NEWIPC)
    .union(UnshareFlags::NEWUTS)
    .union(UnshareFlags::NEWNET);

/// `unshare(2)` for namespace flags.
pub fn unshare(flags: UnshareFlags) -> io::Result<()> {
    // SAFETY: only namespace flags are passed (never CLONE_FILES), so no
    // thread is left with descriptors from another table.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// The uid (or gid) map of a process that keeps its own id.
pub fn identity_map(id: u32) -> String {
    format!("{id} {id} 1\n")
}

/// The map a root caller writes for its VMM: root stays root (to open what
/// the VM needs) and the jail id exists to switch to afterwards.
pub fn root_and_jail_map(jail_id: u32) -> String {
    format!("0 0 1\n{jail_id} {jail_id} 1\n")
}

/// Maps the calling process's own uid and gid in its new user namespace
/// (the only map an unprivileged process may write for itself).
pub fn map_self(uid: u32, gid: u32) -> io::Result<()> {
    std::fs::write("/proc/self/uid_map", identity_map(uid))?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/gid_map", identity_map(gid))
}

/// Writes the id maps of `pid`'s new user namespace from its parent
/// namespace (root only: the map names two ids).
pub fn map_child(pid: i32, jail_uid: u32, jail_gid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), root_and_jail_map(jail_uid))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), root_and_jail_map(jail_gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines() {
        assert_eq!(identity_map(1000), "1000 1000 1\n");
        assert_eq!(root_and_jail_map(64000), "0 0 1\n64000 64000 1\n");
    }
}
