//! What this host lets the jail do, for `kiln doctor`: the same steps the
//! jail takes, tried in a throw-away child process.

use std::path::Path;

use super::cgroup;

/// One piece of the jail and whether this host gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Short name.
    pub name: &'static str,
    /// Whether the jail gets it.
    pub available: bool,
    /// What was found, in one line.
    pub detail: String,
}

fn piece(name: &'static str, available: bool, detail: impl Into<String>) -> Piece {
    Piece {
        name,
        available,
        detail: detail.into(),
    }
}

/// Runs `step` in a forked child and reports whether it returned 0.
fn in_child(step: fn() -> libc::c_int) -> bool {
    // SAFETY: the child only makes raw syscalls (unshare, _exit), which
    // are safe after fork in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: leaving the child without running destructors.
        unsafe { libc::_exit(step()) };
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` outlives the call.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

fn try_unshare(flags: libc::c_int) -> libc::c_int {
    // SAFETY: unshare takes an integer; it only affects this child.
    unsafe { libc::unshare(flags) }
}

/// Every piece of the jail, as this host gives it to a caller like this
/// process (root or not).
pub fn probe(cgroup_parent: &Path) -> Vec<Piece> {
    let root = rustix::process::geteuid().is_root();
    let mut pieces = Vec::new();
    let userns = in_child(|| try_unshare(libc::CLONE_NEWUSER));
    pieces.push(piece(
        "user namespace",
        userns,
        if userns {
            "available"
        } else {
            "refused (kernel.unprivileged_userns_clone=0 or user.max_user_namespaces=0?)"
        },
    ));
    let others = in_child(|| {
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET;
        if rustix::process::geteuid().is_root() {
            try_unshare(flags)
        } else {
            try_unshare(libc::CLONE_NEWUSER | flags)
        }
    });
    pieces.push(piece(
        "namespaces",
        others,
        if others {
            "pid, mount, ipc, uts, net: private root with only the VM's files"
        } else {
            "refused: no private root, no pid namespace"
        },
    ));
    pieces.push(piece(
        "unprivileged ids",
        true,
        if root {
            "started as root: the VMM switches to the jail uid/gid"
        } else {
            "started unprivileged: the VMM keeps this uid and drops every capability"
        },
    ));
    let seccomp = crate::seccomp::kernel_supports_seccomp()
        && std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
            .is_ok_and(|a| a.split_whitespace().any(|x| x == "trap"));
    pieces.push(piece(
        "seccomp",
        seccomp,
        if seccomp {
            "filters with SECCOMP_RET_TRAP available"
        } else {
            "no seccomp filters (kernel without CONFIG_SECCOMP_FILTER?)"
        },
    ));
    let cg = cgroup::cgroup2_mount().and_then(|mount| cgroup_detail(&mount, cgroup_parent));
    pieces.push(match cg {
        Ok(detail) => piece("cgroup v2", true, detail),
        Err(e) => piece("cgroup v2", false, format!("no per-VM limits: {e}")),
    });
    pieces
}

/// Where the VM cgroups would go and whether the controllers are there.
fn cgroup_detail(mount: &Path, parent: &Path) -> Result<String, cgroup::CgroupError> {
    let controllers_path = mount.join("cgroup.controllers");
    let controllers =
        std::fs::read_to_string(&controllers_path).map_err(|source| cgroup::CgroupError::Io {
            path: controllers_path,
            source,
        })?;
    for needed in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(cgroup::CgroupError::Controller(needed));
        }
    }
    let target = mount.join(parent);
    let writable_dir = if target.exists() {
        target.clone()
    } else {
        mount.to_owned()
    };
    if rustix::fs::access(&writable_dir, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(cgroup::CgroupError::Io {
            path: writable_dir,
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
    }
    let cpu = controllers.split_whitespace().any(|c| c == "cpu");
    Ok(format!(
        "VMs get {}/vm-<pid> with memory.max and pids.max{}",
        target.display(),
        if cpu {
            ", cpu.max on request"
        } else {
            " (no cpu controller: no cpu quota)"
        }
    ))
}
