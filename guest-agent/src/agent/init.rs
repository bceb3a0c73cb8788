//! PID 1 duties before serving: mount the kernel file systems, make sure
//! fds 0-2 exist, bring up `lo`. Every step is best effort: a failure is
//! logged and the agent carries on, since an agent that serves without
//! /dev/shm beats a kernel panic.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};

use thiserror::Error;

use super::config::Config;
use super::klog::{chain, klog};
use super::sandbox::Sandbox;

/// Why one init step failed.
#[derive(Debug, Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {fstype} on {target} failed")]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Opening /dev/null for a missing standard fd failed.
    #[error("cannot open /dev/null for standard fds")]
    StdFds(#[source] io::Error),
    /// Bringing up the loopback interface failed.
    #[error("cannot bring up lo")]
    Loopback(#[source] io::Error),
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// In order: later mount points live inside earlier ones.
const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "mode=0620,ptmxmode=0666",
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
];

/// Builds the sandbox (image root, home, cgroups) once the kernel file
/// systems are mounted: call after [`setup`].
pub fn sandbox(config: &Config, warnings: &[String]) -> Sandbox {
    Sandbox::guest(config, warnings)
}

/// Runs every init step, logging failures.
pub fn setup() {
    for spec in MOUNTS {
        if let Err(e) = mount(spec) {
            klog!("init: {}", chain(&e));
        }
    }
    if let Err(e) = ensure_std_fds() {
        klog!("init: {}", chain(&e));
    }
    if let Err(e) = loopback_up() {
        klog!("init: {}", chain(&e));
    }
}

fn mount(spec: &MountSpec) -> Result<(), InitError> {
    let err = |source| InitError::Mount {
        fstype: spec.fstype,
        target: spec.target,
        source,
    };
    match std::fs::create_dir_all(spec.target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let cstr = |s: &str| CString::new(s).map_err(|e| err(io::Error::other(e)));
    let (source, target, fstype, data) = (
        cstr(spec.source)?,
        cstr(spec.target)?,
        cstr(spec.fstype)?,
        cstr(spec.data)?,
    );
    // SAFETY: all four pointers are NUL-terminated strings that live across
    // the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            spec.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == -1 {
        let e = io::Error::last_os_error();
        // Already mounted (the kernel may automount devtmpfs): fine.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(err(e));
        }
    }
    Ok(())
}

/// The kernel starts init with fds 0-2 on /dev/console only if the
/// initramfs has one; otherwise they are closed and the first socket we
/// open would become "stderr". Point any missing one at /dev/null.
fn ensure_std_fds() -> Result<(), InitError> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries flags of a possibly-closed fd.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(InitError::StdFds)?;
        if null.as_raw_fd() == fd {
            // open() returned the lowest free fd, which is the one missing.
            let _ = null.into_raw_fd();
            continue;
        }
        // SAFETY: dup2 onto a closed standard fd; `null` stays owned and is
        // closed when dropped.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(InitError::StdFds(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `ip link set lo up`, via SIOCGIFFLAGS / SIOCSIFFLAGS.
fn loopback_up() -> Result<(), InitError> {
    // SAFETY: plain syscall, no pointers.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock == -1 {
        return Err(InitError::Loopback(io::Error::last_os_error()));
    }
    // SAFETY: socket() returned a new fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the
    // kernel fills in the flags union member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } == -1 {
        return Err(InitError::Loopback(io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } == -1 {
        return Err(InitError::Loopback(io::Error::last_os_error()));
    }
    Ok(())
}
