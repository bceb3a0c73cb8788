//! The pid namespace's two processes. `kiln-vmm` as its caller started it
//! (the pid the caller waits for and kills) forks the VMM as pid 1 of a new
//! pid namespace and becomes its supervisor: it forwards SIGTERM, SIGINT
//! and SIGUSR1, removes the VMM's vsock socket and cgroup once the VMM is
//! gone, and ends the way the VMM ended (same exit code, or same signal).
//! The VMM dies with SIGKILL if the supervisor does (`PR_SET_PDEATHSIG`),
//! and as pid 1 it takes its namespace with it: killing the caller's pid
//! ends everything.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::cgroup::VmCgroup;
use crate::seccomp::{Runtime, ThreadFilters, ThreadKind};

/// How long either side waits for the other during setup.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor checks on the VMM between signals.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Signals the supervisor passes on to the VMM.
pub const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// One end of the setup handshake: a byte each way over two pipes.
pub struct Sync {
    rx: std::fs::File,
    tx: Option<std::fs::File>,
}

/// Identity of a file, to tell the VMM's socket from someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the socket (or anything) at `path`, if it exists.
    pub fn of(path: &Path) -> Option<Self> {
        std::fs::symlink_metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl Sync {
    /// Waits up to `timeout` for one byte from the other side; `None` when
    /// it closed its end (it died) or never wrote.
    pub fn recv(&mut self, timeout: Duration) -> Option<u8> {
        let mut fds = [PollFd::new(&self.rx, PollFlags::IN)];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let ts = rustix::event::Timespec {
            tv_sec: i64::from(ms / 1000),
            tv_nsec: i64::from(ms % 1000) * 1_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        let mut byte = [0u8];
        match self.rx.read(&mut byte) {
            Ok(1) => Some(byte[0]),
            _ => None,
        }
    }

    /// Sends one byte to the other side.
    pub fn send(&mut self, byte: u8) -> io::Result<()> {
        match &mut self.tx {
            Some(tx) => tx.write_all(&[byte]),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Whether the other side still runs (its end of our pipe is open).
    pub fn peer_alive(&self) -> bool {
        let mut fds = [PollFd::new(&self.rx, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(0) => true,
            _ => !fds[0].revents().contains(PollFlags::HUP),
        }
    }

    /// Stops sending: the other side sees end-of-file.
    pub fn close_tx(&mut self) {
        self.tx = None;
    }
}

/// What `fork` made of the calling process.
pub enum Forked {
    /// The caller's process, now the supervisor of `child`.
    Parent {
        /// The VMM's pid (in the caller's pid namespace).
        child: i32,
        /// The handshake with it.
        sync: Sync,
        /// Whether the child started in the cgroup `fork` was given.
        in_cgroup: bool,
    },
    /// The new process: pid 1 of the new pid namespace, the VMM to be.
    Child(Sync),
}

fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    let (r, w): (OwnedFd, OwnedFd) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((r.into(), w.into()))
}

/// `CLONE_INTO_CGROUP` (linux/sched.h, Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (linux/sched.h) up to `cgroup`: `CLONE_ARGS_SIZE_VER2`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks with `clone3(CLONE_INTO_CGROUP)`: the child starts in `cgroup`
/// (a cgroup directory), which spares the move through `cgroup.procs`,
/// whose write waits for an RCU grace period (the threadgroup rwsem),
/// the slowest step of a jailed start on a busy or emulated host. Returns
/// like `fork(2)`.
fn fork_into(cgroup: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed, read by the
    // kernel during the call. Without CLONE_VM or a new stack the child is
    // a copy of this single-threaded process that returns here, as after
    // fork(2). Unlike glibc's fork, this one leaves glibc's cached thread
    // id of the child's main thread at the parent's: only robust or
    // priority-inheriting pthread mutexes and pthread_kill of the main
    // thread read it, and the VMM uses neither (std's locks are futexes,
    // and signals go to the vCPU threads it spawns, or by sigwait).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    libc::pid_t::try_from(rc).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// Forks the VMM, straight into `cgroup` when given and the kernel allows
/// it (Linux 5.7, and the caller may write the cgroup's `cgroup.procs`);
/// otherwise with a plain fork, and [`Forked::Parent`] says the child still
/// has to be moved. The calling process must be single-threaded (it is:
/// nothing has spawned a thread yet), so the child may run normal code.
pub fn fork(cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let (down_rx, down_tx) = pipe()?;
    let (up_rx, up_tx) = pipe()?;
    let mut in_cgroup = false;
    let mut pid = -1;
    if let Some(cgroup) = cgroup {
        match fork_into(cgroup) {
            Ok(p) => {
                pid = p;
                in_cgroup = true;
            }
            Err(e) => tracing::debug!("clone3 into the vm cgroup: {e}; forking, then moving"),
        }
    }
    if !in_cgroup {
        // SAFETY: the process is single-threaded, so the child is a
        // complete copy that may allocate and lock as usual.
        pid = unsafe { libc::fork() };
    }
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop((down_tx, up_rx));
            crate::jail::privileges::die_with_parent()?;
            Ok(Forked::Child(Sync {
                rx: down_rx,
                tx: Some(up_tx),
            }))
        }
        child => {
            drop((down_rx, up_tx));
            Ok(Forked::Parent {
                child,
                sync: Sync {
                    rx: up_rx,
                    tx: Some(down_tx),
                },
                in_cgroup,
            })
        }
    }
}

/// The supervisor side once the VMM runs.
pub struct Supervisor {
    /// The VMM's pid.
    pub child: i32,
    /// The handshake pipes, kept so the VMM sees us alive.
    pub sync: Sync,
    /// The VMM's cgroup, removed after it exits.
    pub cgroup: Option<VmCgroup>,
    /// The vsock socket path and what was there before the VMM started.
    pub socket: Option<(PathBuf, Option<FileId>)>,
    /// Whether to run under the supervisor's seccomp filter.
    pub seccomp: bool,
}

/// How the VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Supervisor {
    /// Waits for the VMM, cleans up after it and ends the same way.
    pub fn run(self) -> ! {
        if let Err(e) = crate::jail::privileges::keep_only_kill() {
            tracing::warn!("jail: the supervisor keeps its capabilities: {e}");
        }
        if self.seccomp && crate::seccomp::kernel_supports_seccomp() {
            let filters = ThreadFilters::compile_kinds(
                &Runtime {
                    pid: u64::from(std::process::id()),
                    kick_signal: 0,
                    child: u64::try_from(self.child).ok(),
                },
                &[ThreadKind::Supervisor],
            );
            if let Err(e) = filters.and_then(|f| f.install(ThreadKind::Supervisor)) {
                tracing::warn!("jail: the supervisor runs without seccomp: {e}");
            }
        }
        tracing::debug!("step: supervisor filter installed");
        // From here on it only waits: the code it ran to get here need not
        // stay mapped.
        match crate::resident::release_startup_code() {
            Ok(n) => tracing::debug!("supervisor: released {} KiB of start-up code", n / 1024),
            Err(e) => tracing::debug!("supervisor: start-up code stays resident: {e}"),
        }
        let ended = self.wait();
        self.clean_up();
        mirror(ended)
    }

    fn wait(&self) -> Ended {
        let mut set = vmm_sys_util::signal::create_sigset(&FORWARDED).unwrap_or_else(|_| {
            // SAFETY: an all-zero sigset is a valid (empty) set.
            unsafe { std::mem::zeroed() }
        });
        // SAFETY: `set` is initialised; SIGCHLD is a valid signal.
        unsafe { libc::sigaddset(&mut set, libc::SIGCHLD) };
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: POLL_INTERVAL.as_nanos() as libc::c_long,
        };
        loop {
            // SAFETY: the set and timeout outlive the call; a null siginfo
            // pointer is allowed. These signals are blocked in this process.
            let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
            if FORWARDED.contains(&sig) {
                // SAFETY: kill takes plain integers; the child is ours and
                // unreaped, so its pid cannot have been reused.
                unsafe { libc::kill(self.child, sig) };
            }
            let mut status = 0;
            // SAFETY: `status` outlives the call.
            let rc = unsafe { libc::waitpid(self.child, &mut status, libc::WNOHANG) };
            if rc == self.child {
                if libc::WIFEXITED(status) {
                    return Ended::Exited(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    return Ended::Signaled(libc::WTERMSIG(status));
                }
            } else if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Ended::Exited(1);
            }
        }
    }

    fn clean_up(&self) {
        if let Some((path, before)) = &self.socket {
            // The VMM bound a new socket there (a live one of someone else's
            // would have stopped it from starting): remove it.
            let now = FileId::of(path);
            if now.is_some() && now != *before {
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some(cgroup) = &self.cgroup {
            // The reaped VMM may take a moment to leave the cgroup.
            let deadline = Instant::now() + Duration::from_secs(1);
            while let Err(e) = cgroup.remove() {
                if Instant::now() >= deadline {
                    tracing::warn!("jail: cannot remove cgroup {}: {e}", cgroup.path.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Ends this process the way the VMM ended.
fn mirror(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => std::process::exit(code),
        Ended::Signaled(sig) => {
            // SAFETY: restoring the default action and unblocking `sig`
            // before sending it to ourselves: plain integer arguments.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
            }
            // A signal whose default is to be ignored: still report it.
            std::process::exit(128 + sig)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn handshake_bytes_and_peer_death() {
        let (a_rx, b_tx) = pipe().unwrap();
        let (b_rx, a_tx) = pipe().unwrap();
        let mut a = Sync {
            rx: a_rx,
            tx: Some(a_tx),
        };
        let mut b = Sync {
            rx: b_rx,
            tx: Some(b_tx),
        };
        assert_eq!(a.recv(Duration::from_millis(10)), None, "nothing sent yet");
        b.send(b'U').unwrap();
        assert_eq!(a.recv(SYNC_TIMEOUT), Some(b'U'));
        assert!(a.peer_alive());
        b.close_tx();
        // A process another test is spawning holds a copy of the write end
        // until its exec closes it (CLOEXEC): give that a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.peer_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!a.peer_alive(), "closed end reads as a dead peer");
        assert_eq!(a.recv(SYNC_TIMEOUT), None);
        a.close_tx();
        assert!(a.send(1).is_err());
    }

    /// Whether this (forked, so allocation-free) process's cgroup v2 line
    /// ends with `name`: raw reads into a stack buffer.
    fn own_cgroup_ends_with(name: &[u8]) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: a constant C path; `buf` outlives the read into it.
        let n = unsafe {
            let fd = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return false;
            }
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n
        };
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        buf[..n]
            .split(|&b| b == b'\n')
            .any(|line| line.starts_with(b"0::/") && line.ends_with(name))
    }

    /// Set in the re-run of this test binary that forks for real.
    const FORK_ALONE_ENV: &str = "KILN_TEST_FORK_INTO_CGROUP";

    #[test]
    fn fork_starts_the_child_in_the_given_cgroup() {
        // A fork inside the multi-threaded harness would hand the child the
        // pipe ends of the tests running beside it (the handshake test sees
        // its peer alive): the fork runs alone, in a re-run of this binary.
        if std::env::var_os(FORK_ALONE_ENV).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "jail::supervisor::tests::fork_starts_the_child_in_the_given_cgroup",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(FORK_ALONE_ENV, "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "the re-run did not run the test"
            );
            return;
        }
        // Needs a writable cgroup v2 hierarchy (root, or a delegated one):
        // without one the test cannot run, and says so by failing.
        let mount = crate::jail::cgroup2_mount()
            .unwrap_or_else(|e| panic!("no cgroup v2 hierarchy to fork into: {e}"));
        let name = format!("kiln-fork-into-{}", std::process::id());
        let dir = mount.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            panic!(
                "cannot create a cgroup in {} to fork into: {e}",
                mount.display()
            );
        }
        let dir_fd = std::fs::File::open(&dir).unwrap();
        let forked = fork(Some(dir_fd.as_fd()));
        match forked {
            Ok(Forked::Child(_)) => {
                let ok = own_cgroup_ends_with(name.as_bytes());
                // SAFETY: leaving the forked child without running the
                // test harness's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            Ok(Forked::Parent {
                child, in_cgroup, ..
            }) => {
                let mut status = 0;
                // SAFETY: `status` outlives the call; `child` is ours.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                std::fs::remove_dir(&dir).unwrap();
                assert!(in_cgroup, "clone3 into the cgroup was refused");
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "the child did not start in {name}: status {status:#x}"
                );
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("fork: {e}");
            }
        }
    }

    #[test]
    fn file_ids_tell_files_apart() {
        let dir = std::env::temp_dir().join(format!("kiln-fileid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        assert_eq!(FileId::of(&p), None);
        std::fs::write(&p, b"1").unwrap();
        let first = FileId::of(&p);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.join("keep"), b"1").unwrap();
        std::fs::write(&p, b"2").unwrap();
        assert_ne!(FileId::of(&p), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
