//! A connected stream socket (vsock or unix), independent of its family.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// One accepted connection. Reads and writes go straight to the socket;
/// writes use `MSG_NOSIGNAL` so a vanished peer is an error, not SIGPIPE.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Wraps an accepted, close-on-exec stream socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// A second handle on the same socket (close-on-exec), for a reader
    /// thread.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// Bounds each blocking read (`None` = wait forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_timeout(libc::SO_RCVTIMEO, timeout)
    }

    /// Bounds each blocking write (`None` = wait forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_timeout(libc::SO_SNDTIMEO, timeout)
    }

    fn set_timeout(&self, opt: libc::c_int, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            Some(t) => libc::timeval {
                tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                // A zero timeval means "forever"; round tiny timeouts up.
                tv_usec: libc::suseconds_t::from(t.subsec_micros().max(u32::from(t.is_zero()))),
            },
        };
        // SAFETY: `tv` is a valid timeval that outlives the call and the
        // length passed is its size; the fd is owned and open.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the peer has hung up (or shut down its sending side): a
    /// non-blocking check for handlers that wait without reading.
    pub fn peer_closed(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd that outlives the
        // call; a zero timeout never blocks.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        n > 0 && fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Shuts down both directions, waking any thread blocked reading a
    /// clone of this connection. Data already written is still delivered.
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on an owned, open fd; failure (peer already
        // gone) is harmless and ignored.
        unsafe {
            libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }

    /// Shuts down the sending direction only (the peer sees end of stream).
    pub fn shutdown_write(&self) {
        // SAFETY: as in `shutdown`.
        unsafe {
            libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR);
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // duration of the call; the fd is owned and open.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the
        // duration of the call; the fd is owned and open.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn read_write_clone_and_shutdown() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut conn = Conn::new(OwnedFd::from(a));
        let mut peer = b;
        conn.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        peer.write_all(b"x").expect("write");
        let mut clone = conn.try_clone().expect("clone");
        let mut one = [0u8; 1];
        clone.read_exact(&mut one).expect("read clone");
        conn.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let err = loop {
            match clone.read(&mut one) {
                // Retried, as every reader of a Conn does.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.expect_err("timed out"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err:?}");
        conn.set_read_timeout(None).expect("timeout");
        assert!(!conn.peer_closed());
        peer.shutdown(std::net::Shutdown::Write)
            .expect("half close");
        assert!(conn.peer_closed(), "a half close counts as gone");
        conn.shutdown();
        assert_eq!(clone.read(&mut one).expect("eof"), 0);
        drop(peer);
        assert!(
            conn.write(b"y").is_err(),
            "write after shutdown fails without SIGPIPE"
        );
    }
}
