//! The only place that waits for child processes.
//!
//! One reaper thread owns every `wait*` call of the agent. As PID 1 it reaps
//! orphans the kernel re-parents to us; for programs the agent spawned it
//! hands the exit status to the callback registered at spawn time.
//!
//! Races are closed with one mutex (`State`):
//! - `spawn` holds it across `Command::spawn` and the registration, so a
//!   child that dies at once cannot be reaped before its callback exists,
//!   and std's internal `waitpid` after a failed `exec` never finds its
//!   child already reaped.
//! - the reaper thread blocks in `waitid(WNOWAIT)`, which only peeks, and
//!   reaps under the mutex.
//! - `kill_group` sends its signal under the mutex, so a process group id
//!   cannot be recycled by a spawn of ours between the check and the kill.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::klog::klog;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl WaitStatus {
    fn from_raw(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            Self::Signaled(libc::WTERMSIG(status))
        } else {
            Self::Exited(libc::WEXITSTATUS(status))
        }
    }
}

type OnExit = Box<dyn FnOnce(WaitStatus) + Send>;

#[derive(Default)]
struct State {
    waiters: HashMap<libc::pid_t, OnExit>,
    /// Bumped on every spawn, to wake a reaper that found no children.
    spawns: u64,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    spawned: Condvar,
}

/// Handle on the reaper thread; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let thread_inner = Arc::clone(&inner);
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_forever(&thread_inner))?;
        Ok(Self { inner })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Spawns `cmd`; `on_exit` runs on the reaper thread when the child
    /// exits. It must not block.
    pub fn spawn(
        &self,
        cmd: &mut Command,
        on_exit: impl FnOnce(WaitStatus) + Send + 'static,
    ) -> io::Result<Child> {
        let mut state = self.lock();
        let child = cmd.spawn()?;
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| io::Error::other("child pid out of range"))?;
        state.waiters.insert(pid, Box::new(on_exit));
        state.spawns = state.spawns.wrapping_add(1);
        drop(state);
        self.inner.spawned.notify_all();
        Ok(child)
    }

    /// Sends SIGKILL to every process in group `pgid`. Missing groups are
    /// not an error.
    pub fn kill_group(&self, pgid: libc::pid_t) {
        let _ = self.signal_group(pgid, libc::SIGKILL);
    }

    /// Sends `signal` to every process in group `pgid`. A group that is
    /// already gone is not an error.
    pub fn signal_group(&self, pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
        if pgid <= 1 {
            return Ok(());
        }
        let _state = self.lock();
        // SAFETY: plain syscall; a negative pid addresses a process group
        // and `pgid > 1`, so this can never signal every process (-1).
        if unsafe { libc::kill(-pgid, signal) } == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    // A poisoned lock only means a callback panicked; the map is intact.
    inner.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn reap_forever(inner: &Inner) {
    loop {
        let spawns_before = lock(inner).spawns;
        // SAFETY: all-zero is a valid siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the
        // child waitable, so nothing is reaped outside the lock.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => wait_for_spawn(inner, spawns_before),
                _ => {
                    klog!("reaper: waitid failed: {err}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so the kernel filled in the
        // child fields of `info`.
        let pid = unsafe { info.si_pid() };
        let mut state = lock(inner);
        let mut raw = 0;
        // SAFETY: `raw` is a valid out pointer; WNOHANG never blocks while
        // we hold the lock.
        let reaped = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
        if reaped != pid {
            // Already reaped by std after a failed exec (under our lock).
            continue;
        }
        let waiter = state.waiters.remove(&pid);
        drop(state);
        if let Some(on_exit) = waiter {
            on_exit(WaitStatus::from_raw(raw));
        }
    }
}

/// No children: sleep until a spawn (or a second, to pick up orphans that
/// could only appear if something else forked).
fn wait_for_spawn(inner: &Inner, spawns_before: u64) {
    let state = lock(inner);
    let _ = inner
        .spawned
        .wait_timeout_while(state, Duration::from_secs(1), |s| s.spawns == spawns_before);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, OnceLock};

    /// One reaper per process, as in the agent: two would steal each
    /// other's children.
    pub(crate) fn test_reaper() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper::start().expect("start reaper"))
    }

    #[test]
    // The reaper thread waits for them.
    #[allow(clippy::zombie_processes)]
    fn statuses_reach_their_waiters() {
        let reaper = test_reaper();
        let (tx, rx) = mpsc::channel();
        for (i, script) in ["exit 7", "kill -9 $$", "exit 0"].iter().enumerate() {
            let tx = tx.clone();
            reaper
                .spawn(Command::new("sh").args(["-c", script]), move |st| {
                    let _ = tx.send((i, st));
                })
                .expect("spawn");
        }
        let mut got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("status"))
            .collect();
        got.sort_by_key(|(i, _)| *i);
        assert_eq!(
            got,
            [
                (0, WaitStatus::Exited(7)),
                (1, WaitStatus::Signaled(9)),
                (2, WaitStatus::Exited(0))
            ]
        );
    }

    #[test]
    fn failed_exec_is_an_error_not_a_crash() {
        let reaper = test_reaper();
        for _ in 0..20 {
            let err = reaper
                .spawn(&mut Command::new("/nonexistent/program"), |_| {})
                .expect_err("must fail");
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }
}
