//! A wake pipe: other threads write a byte, the supervisor's `poll(2)`
//! sees it next to the program's output pipes; and the mailbox the reaper
//! leaves the exit status in.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::super::reaper::WaitStatus;

/// What other threads tell a supervisor, and its wake pipe. Exists before
/// the program is spawned, so the reaper's callback has somewhere to go.
#[derive(Debug)]
pub struct Mailbox {
    /// Wakes the supervisor's poll.
    pub waker: Waker,
    reaped: Mutex<Option<WaitStatus>>,
}

impl Mailbox {
    /// An empty mailbox with a fresh wake pipe.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            waker: Waker::new()?,
            reaped: Mutex::new(None),
        })
    }

    /// Reaper callback: the program exited (never blocks).
    pub fn set_reaped(&self, status: WaitStatus) {
        *self.reaped.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        self.waker.wake();
    }

    /// The exit status, once, for the supervisor.
    pub fn take_reaped(&self) -> Option<WaitStatus> {
        self.reaped.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Both ends of a non-blocking, close-on-exec pipe.
#[derive(Debug)]
pub struct Waker {
    rx: File,
    tx: OwnedFd,
}

impl Waker {
    /// Creates the pipe.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody
        // else; each is wrapped exactly once.
        let (rx, tx) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { rx, tx })
    }

    /// Makes the read end readable.
    pub fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writes one byte from a live local; the pipe is
        // non-blocking, and a full pipe already means "wake up".
        unsafe {
            libc::write(self.tx.as_raw_fd(), (&byte as *const u8).cast(), 1);
        }
    }

    /// Empties the pipe.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// The read end, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_then_drain() {
        let w = Waker::new().expect("pipe");
        for _ in 0..100_000 {
            w.wake(); // never blocks, even with the pipe full
        }
        w.drain();
        let mut buf = [0u8; 1];
        let err = (&w.rx).read(&mut buf).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
