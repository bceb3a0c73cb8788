//! The output pump: one `poll(2)` loop per exec that forwards stdout/stderr
//! as frames, enforces the timeout, and writes the final `Exit`.
//!
//! Other threads talk to the pump through [`Shared`]: they store an event
//! and write a byte to a wake pipe the loop polls. Output is read only when
//! the previous chunk has been written, so a slow host slows the program
//! down instead of filling agent memory.
//!
//! State machine:
//! - running: forward output; at the deadline kill the group (timed out).
//! - exited (reaper reported): kill what is left of the group, then drain
//!   the pipes until both close or `DRAIN_GRACE` passes; write `Exit`.
//! - killed but no exit after `KILL_GRACE` (stuck in the kernel): write
//!   `Exit` without code or signal.
//! - host gone (stdin thread saw end of stream, or a write failed): kill the
//!   group and stop; host sent garbage: kill, reply `Error`, stop.
//!
//! "Kill" means SIGKILL to the process group and, when the exec has a
//! cgroup, `cgroup.kill` on it (which also reaches processes that left the
//! group). Output past `max_output` bytes (stdout + stderr together) is
//! still read, so the program never blocks on a full pipe, but dropped;
//! the exit then says `truncated`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_agent::protocol::{write_message, ErrorCode, ExitStatus, Message, MAX_CHUNK};

use super::super::conn::Conn;
use super::super::reaper::{Reaper, WaitStatus};
use super::super::sandbox::ExecCgroup;

/// How long output is still forwarded after the program exits.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the exit status after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Something the host did while the program ran.
#[derive(Debug)]
pub enum HostEvent {
    /// The connection closed or failed.
    Gone,
    /// The host sent a frame that does not belong in an exec.
    Bad(ErrorCode, String),
}

#[derive(Default)]
struct Events {
    exit: Option<WaitStatus>,
    host: Option<HostEvent>,
}

/// Mailbox from the reaper and stdin threads to the pump.
pub struct Shared {
    events: Mutex<Events>,
    wake_rx: File,
    wake_tx: OwnedFd,
}

impl Shared {
    /// Creates the mailbox and its wake pipe.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody
        // else; each is wrapped exactly once.
        let (rx, tx) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self {
            events: Mutex::new(Events::default()),
            wake_rx: rx,
            wake_tx: tx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writes one byte from a live local; the pipe is
        // non-blocking, and a full pipe already means "wake up".
        unsafe {
            libc::write(self.wake_tx.as_raw_fd(), (&byte as *const u8).cast(), 1);
        }
    }

    /// Called by the reaper when the program exits.
    pub fn set_exit(&self, status: WaitStatus) {
        self.lock().exit = Some(status);
        self.wake();
    }

    /// Called by the stdin thread; the first event wins.
    pub fn set_host(&self, event: HostEvent) {
        self.lock().host.get_or_insert(event);
        self.wake();
    }

    fn take(&self) -> Events {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.lock())
    }
}

/// One of the program's output pipes.
pub struct Output {
    file: Option<File>,
    stderr: bool,
}

impl Output {
    /// Wraps the program's stdout pipe.
    pub fn stdout(pipe: ChildStdout) -> Self {
        Self {
            file: Some(File::from(OwnedFd::from(pipe))),
            stderr: false,
        }
    }

    /// Wraps the program's stderr pipe.
    pub fn stderr(pipe: ChildStderr) -> Self {
        Self {
            file: Some(File::from(OwnedFd::from(pipe))),
            stderr: true,
        }
    }
}

/// Everything the pump loop needs.
pub struct Pump<'a> {
    /// The connection; the pump is its only writer.
    pub conn: &'a mut Conn,
    /// Events from other threads.
    pub shared: &'a Shared,
    /// For killing the process group.
    pub reaper: &'a Reaper,
    /// The program's process group (== its pid).
    pub pgid: libc::pid_t,
    /// When the program was spawned.
    pub started: Instant,
    /// Kill after this long.
    pub timeout: Option<Duration>,
    /// stdout and stderr pipes.
    pub outputs: [Option<Output>; 2],
    /// Most output bytes sent to the host.
    pub max_output: u64,
    /// The exec's cgroup, if the sandbox has limits.
    pub cgroup: Option<&'a ExecCgroup>,
}

enum Step {
    Continue,
    /// Stop without writing `Exit`.
    Abort,
}

impl Pump<'_> {
    /// Runs until the exec is over.
    pub fn run(mut self) {
        let deadline = self.timeout.and_then(|t| self.started.checked_add(t));
        let mut exit: Option<(WaitStatus, Duration)> = None;
        let mut timed_out = false;
        let mut give_up_at: Option<Instant> = None;
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut sent: u64 = 0;
        let mut truncated = false;

        loop {
            let now = Instant::now();
            if exit.is_some() && self.outputs_closed() {
                break;
            }
            if exit.is_none() && !timed_out && deadline.is_some_and(|d| now >= d) {
                self.kill();
                timed_out = true;
                give_up_at = Some(now + KILL_GRACE);
            }
            if give_up_at.is_some_and(|t| now >= t) {
                break;
            }
            let wake_at = if timed_out || exit.is_some() {
                give_up_at
            } else {
                deadline
            };
            let ready = self.poll(wake_at.map(|t| t.saturating_duration_since(now)));

            let events = self.shared.take();
            if let Some(status) = events.exit {
                if exit.is_none() {
                    exit = Some((status, self.started.elapsed()));
                    // Background jobs do not outlive the exec.
                    self.kill();
                    give_up_at = Some(Instant::now() + DRAIN_GRACE);
                }
            }
            if let Some(event) = events.host {
                self.kill();
                if let HostEvent::Bad(code, message) = event {
                    let _ = write_message(self.conn, &Message::error(code, message));
                }
                return;
            }
            for i in ready {
                if let Step::Abort = self.forward(i, &mut buf, &mut sent, &mut truncated) {
                    self.kill();
                    return;
                }
            }
        }

        let (status, duration) = exit.unwrap_or((WaitStatus::Exited(-1), self.started.elapsed()));
        let known = exit.is_some();
        let result = ExitStatus {
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
            oom_killed: self.cgroup.is_some_and(ExecCgroup::oom_killed),
        };
        let _ = write_message(self.conn, &Message::Exit(result));
    }

    /// Kills the process group and everything in the exec's cgroup.
    fn kill(&self) {
        self.reaper.kill_group(self.pgid);
        if let Some(cg) = self.cgroup {
            cg.kill();
        }
    }

    fn outputs_closed(&self) -> bool {
        self.outputs
            .iter()
            .all(|o| o.as_ref().map_or(true, |o| o.file.is_none()))
    }

    /// Polls the open outputs and the wake pipe; returns the indexes of
    /// outputs that are readable (or hung up).
    fn poll(&self, timeout: Option<Duration>) -> Vec<usize> {
        let mut fds = Vec::with_capacity(3);
        let mut index = Vec::with_capacity(2);
        for (i, out) in self.outputs.iter().enumerate() {
            if let Some(file) = out.as_ref().and_then(|o| o.file.as_ref()) {
                fds.push(pollfd(file.as_raw_fd()));
                index.push(i);
            }
        }
        fds.push(pollfd(self.shared.wake_rx.as_raw_fd()));
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

    /// Reads one chunk from output `i` and sends what fits under
    /// `max_output`; `sent` counts bytes sent so far.
    fn forward(&mut self, i: usize, buf: &mut [u8], sent: &mut u64, truncated: &mut bool) -> Step {
        let Some(out) = self.outputs[i].as_mut() else {
            return Step::Continue;
        };
        let Some(file) = out.file.as_mut() else {
            return Step::Continue;
        };
        match file.read(buf) {
            Ok(0) => out.file = None,
            Ok(n) => {
                let room = self.max_output.saturating_sub(*sent);
                let keep = usize::try_from(room).map_or(n, |r| r.min(n));
                if keep < n {
                    *truncated = true;
                }
                if keep == 0 {
                    return Step::Continue;
                }
                *sent = sent.saturating_add(keep as u64);
                let data = buf[..keep].to_vec();
                let msg = if out.stderr {
                    Message::Stderr(data)
                } else {
                    Message::Stdout(data)
                };
                if write_message(self.conn, &msg).is_err() {
                    return Step::Abort;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => out.file = None,
        }
        Step::Continue
    }
}

fn pollfd(fd: libc::c_int) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
