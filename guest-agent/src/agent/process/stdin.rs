//! A process's stdin: offset-tagged writes into a non-blocking pipe.
//!
//! The agent counts the bytes it has accepted. A write carries the offset
//! of its first byte: bytes below the count were accepted before (a retry
//! after a lost reply) and are skipped, a write that starts beyond the
//! count would leave a hole and is refused. A program that stops reading
//! never blocks the agent: a write waits at most its timeout for pipe
//! space and reports how far it got.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why stdin bytes were not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StdinError {
    /// The write starts after the bytes accepted so far.
    #[error("stdin write at offset {offset} leaves a gap: {accepted} bytes accepted so far")]
    Gap {
        /// Where the refused write started.
        offset: u64,
        /// Where the next write must start.
        accepted: u64,
    },
    /// Stdin was closed, never opened, or the program's end is gone.
    #[error("stdin is closed ({accepted} bytes accepted)")]
    Closed {
        /// Bytes accepted before it closed.
        accepted: u64,
    },
}

/// The agent's end of a process's stdin.
#[derive(Debug)]
pub struct StdinPipe {
    pipe: Option<File>,
    accepted: u64,
}

impl StdinPipe {
    /// Wraps the write end of the program's stdin pipe (`None`: the
    /// program has `/dev/null`); makes it non-blocking.
    pub fn new(pipe: Option<OwnedFd>) -> io::Result<Self> {
        if let Some(fd) = &pipe {
            set_nonblocking(fd)?;
        }
        Ok(Self {
            pipe: pipe.map(File::from),
            accepted: 0,
        })
    }

    /// Bytes accepted so far: where the next write starts.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Whether writes are still possible.
    pub fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Closes the pipe (the program reads end of file). Idempotent.
    pub fn close(&mut self) {
        self.pipe = None;
    }

    /// Writes `data`, whose first byte is at `offset` in the stdin stream,
    /// waiting at most `timeout` for the program to make room; returns the
    /// bytes accepted so far, which may fall short of `offset + len` when
    /// the program does not read.
    pub fn write_at(
        &mut self,
        offset: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<u64, StdinError> {
        if offset > self.accepted {
            return Err(StdinError::Gap {
                offset,
                accepted: self.accepted,
            });
        }
        let skip = usize::try_from(self.accepted - offset).unwrap_or(usize::MAX);
        let Some(rest) = data.get(skip..).filter(|r| !r.is_empty()) else {
            // All of it was accepted before: acknowledge, write nothing.
            return Ok(self.accepted);
        };
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(StdinError::Closed {
                accepted: self.accepted,
            });
        };
        let deadline = Instant::now() + timeout;
        let mut written = 0;
        let mut broken = false;
        while written < rest.len() {
            match pipe.write(&rest[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !wait_writable(pipe, left) {
                        break;
                    }
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        self.accepted += written as u64;
        if broken {
            self.pipe = None;
            if written == 0 {
                return Err(StdinError::Closed {
                    accepted: self.accepted,
                });
            }
        }
        Ok(self.accepted)
    }
}

/// Waits up to `timeout` for room in the pipe; false on timeout.
fn wait_writable(pipe: &File, timeout: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    }];
    let ms = libc::c_int::try_from(timeout.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid array of one pollfd that outlives the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    n > 0
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an open fd we own, integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    /// (read end, agent's stdin) of a fresh pipe.
    fn pipe() -> (File, StdinPipe) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded; each fd is wrapped exactly once.
        let (r, w) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (r, StdinPipe::new(Some(w)).expect("stdin"))
    }

    fn read_now(r: &mut File, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).expect("read");
        buf
    }

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn retried_offsets_are_acknowledged_not_written_twice() {
        let (mut r, mut stdin) = pipe();
        assert_eq!(stdin.write_at(0, b"hello", T), Ok(5));
        // The same write again (reply lost): acknowledged, nothing written.
        assert_eq!(stdin.write_at(0, b"hello", T), Ok(5));
        // Overlapping retry: only the new tail is written.
        assert_eq!(stdin.write_at(3, b"lo world", T), Ok(11));
        assert_eq!(stdin.write_at(11, b"", T), Ok(11));
        drop(stdin);
        let mut all = Vec::new();
        r.read_to_end(&mut all).expect("read");
        assert_eq!(all, b"hello world");
    }

    #[test]
    fn a_gap_is_refused_and_nothing_is_written() {
        let (mut r, mut stdin) = pipe();
        assert_eq!(stdin.write_at(0, b"ab", T), Ok(2));
        assert_eq!(
            stdin.write_at(3, b"d", T),
            Err(StdinError::Gap {
                offset: 3,
                accepted: 2
            })
        );
        assert_eq!(stdin.write_at(2, b"c", T), Ok(3));
        assert_eq!(read_now(&mut r, 3), b"abc");
    }

    #[test]
    fn a_full_pipe_gives_a_partial_ack_after_the_timeout() {
        let (mut r, mut stdin) = pipe();
        let big = vec![7u8; 1 << 20];
        let started = Instant::now();
        let accepted = stdin.write_at(0, &big, T).expect("partial");
        assert!(accepted > 0 && accepted < big.len() as u64, "{accepted}");
        assert!(started.elapsed() >= T);
        // Drain, then continue from the ack.
        let n = usize::try_from(accepted).expect("fits");
        assert_eq!(read_now(&mut r, n).len(), n);
        let more = stdin.write_at(accepted, &big[n..], T).expect("more");
        assert!(more > accepted);
    }

    #[test]
    fn closed_and_broken_pipes_are_errors() {
        let (r, mut stdin) = pipe();
        stdin.close();
        assert!(!stdin.is_open());
        assert_eq!(
            stdin.write_at(0, b"x", T),
            Err(StdinError::Closed { accepted: 0 })
        );
        // A duplicate of accepted bytes is still fine when closed.
        assert_eq!(stdin.write_at(0, b"", T), Ok(0));
        drop(r);
        let (r, mut stdin) = pipe();
        drop(r);
        assert_eq!(
            stdin.write_at(0, b"x", T),
            Err(StdinError::Closed { accepted: 0 })
        );
        assert!(!stdin.is_open());
        let mut none = StdinPipe::new(None).expect("none");
        assert_eq!(
            none.write_at(0, b"x", T),
            Err(StdinError::Closed { accepted: 0 })
        );
    }
}
