//! The supervisor: one thread per process, one `poll(2)` loop that moves
//! stdout/stderr into the ring, enforces the timeout, and records the end.
//!
//! State machine (as `Exec` always had it):
//! - running: read output; at the deadline kill the group (timed out).
//! - exited (the reaper reported): kill what is left of the group, then
//!   drain the pipes until both close or `DRAIN_GRACE` passes.
//! - killed but no exit after `KILL_GRACE` (stuck in the kernel): end
//!   without code or signal.
//!
//! Then the exec's cgroup is killed and waited empty (its OOM count read
//! first) and the table publishes the status; only then is the cgroup
//! removed and the next exec's made, off the path of the exit.
//!
//! Output past `max_output` bytes (stdout + stderr together) is still read,
//! so the program never blocks on a full pipe, but dropped; the status then
//! says `truncated`. The only time the pipes are not read is when a
//! keep-all reader (`Exec`) has not sent what the next chunk would evict:
//! then the program waits for the host, as it did before the ring existed.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_agent::protocol::{ExitStatus, OutputStream, MAX_CHUNK};

use super::super::reaper::WaitStatus;
use super::super::sandbox::ExecCgroup;
use super::Process;

/// How long output is still read after the program exits.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the exit status after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Publishes a process's end.
pub type OnFinish = Box<dyn FnOnce(&Process, ExitStatus) + Send>;

/// Everything the loop needs; consumed by [`Supervisor::run`].
pub struct Supervisor {
    /// The process.
    pub process: Arc<Process>,
    /// stdout and stderr pipes.
    pub outputs: [Option<File>; 2],
    /// Kill after this long.
    pub timeout: Option<Duration>,
    /// Most output bytes kept.
    pub max_output: u64,
    /// Publishes the status (see `Table::finished`).
    pub on_finish: OnFinish,
}

const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

impl Supervisor {
    /// Runs until the process is over.
    pub fn run(mut self) {
        let p = Arc::clone(&self.process);
        let deadline = self.timeout.and_then(|t| p.started.checked_add(t));
        let mut exit: Option<(WaitStatus, Duration)> = None;
        let mut timed_out = false;
        let mut give_up_at: Option<Instant> = None;
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut kept: u64 = 0;
        let mut truncated = false;

        loop {
            let now = Instant::now();
            if exit.is_some() && self.outputs_closed() {
                break;
            }
            if exit.is_none() && !timed_out && deadline.is_some_and(|d| now >= d) {
                p.kill();
                timed_out = true;
                give_up_at = Some(now + KILL_GRACE);
            }
            let held_back = p.held_back();
            if held_back && exit.is_some() {
                // A slow reader is not a stuck pipe: the grace restarts
                // once the reader catches up.
                give_up_at = Some(now + DRAIN_GRACE);
            }
            if give_up_at.is_some_and(|t| now >= t) {
                break;
            }
            let wake_at = if timed_out || exit.is_some() {
                give_up_at
            } else {
                deadline
            };
            let ready = self.poll(
                !held_back,
                wake_at.map(|t| t.saturating_duration_since(now)),
            );
            p.mailbox.waker.drain();
            if let Some(status) = p.take_reaped() {
                if exit.is_none() {
                    exit = Some((status, p.started.elapsed()));
                    // Background jobs do not outlive the program.
                    p.kill();
                    give_up_at = Some(Instant::now() + DRAIN_GRACE);
                }
            }
            for i in ready {
                self.forward(i, &mut buf, &mut kept, &mut truncated);
            }
        }

        let (status, duration) = exit.unwrap_or((WaitStatus::Exited(-1), p.started.elapsed()));
        let known = exit.is_some();
        // Nothing reads it any more; a writer waiting on it gets EPIPE.
        p.close_stdin();
        let cgroup = p.take_cgroup();
        let oom_killed = cgroup.as_ref().is_some_and(ExecCgroup::oom_killed);
        if let Some(cg) = &cgroup {
            // Nothing of the exec outlives its published end.
            cg.kill();
            cg.wait_empty();
        }
        let status = ExitStatus {
            code: match status {
                WaitStatus::Exited(c) if known => Some(c),
                _ => None,
            },
            signal: match status {
                WaitStatus::Signaled(s) => Some(s),
                WaitStatus::Exited(_) => None,
            },
            timed_out,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            truncated,
            oom_killed,
        };
        (self.on_finish)(&p, status);
        if let Some(cg) = cgroup {
            cg.remove_and_make_next();
        }
    }

    fn outputs_closed(&self) -> bool {
        self.outputs.iter().all(Option::is_none)
    }

    /// Polls the open outputs (when `read` is set) and the wake pipe;
    /// returns the indexes of outputs that are readable (or hung up).
    fn poll(&self, read: bool, timeout: Option<Duration>) -> Vec<usize> {
        let mut fds = Vec::with_capacity(3);
        let mut index = Vec::with_capacity(2);
        if read {
            for (i, out) in self.outputs.iter().enumerate() {
                if let Some(file) = out {
                    fds.push(pollfd(file.as_raw_fd()));
                    index.push(i);
                }
            }
        }
        fds.push(pollfd(self.process.mailbox.waker.fd()));
        let timeout_ms = match timeout {
            None => -1,
            // Round up so the loop does not spin just before a deadline.
            Some(t) => libc::c_int::try_from(t.as_millis().saturating_add(1)).unwrap_or(i32::MAX),
        };
        // SAFETY: `fds` is a valid, initialised array of `fds.len()`
        // pollfds that lives across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n <= 0 {
            return Vec::new();
        }
        index
            .into_iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents != 0)
            .map(|(i, _)| i)
            .collect()
    }

    /// Reads one chunk from output `i` into the ring, within `max_output`.
    fn forward(&mut self, i: usize, buf: &mut [u8], kept: &mut u64, truncated: &mut bool) {
        let Some(file) = self.outputs[i].as_mut() else {
            return;
        };
        match file.read(buf) {
            Ok(0) => self.outputs[i] = None,
            Ok(n) => {
                let room = self.max_output.saturating_sub(*kept);
                let keep = usize::try_from(room).map_or(n, |r| r.min(n));
                if keep < n {
                    *truncated = true;
                }
                if keep > 0 {
                    *kept = kept.saturating_add(keep as u64);
                    self.process.push_output(STREAMS[i], buf[..keep].to_vec());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => self.outputs[i] = None,
        }
    }
}

fn pollfd(fd: libc::c_int) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
