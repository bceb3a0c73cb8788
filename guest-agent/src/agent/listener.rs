//! Listening sockets: AF_VSOCK in the guest, a unix socket on the host.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::conn::Conn;

/// Pending connections the kernel queues for us.
const BACKLOG: libc::c_int = 128;

/// Why the listening socket could not be set up.
#[derive(Debug, Error)]
pub enum ListenError {
    /// socket/bind/listen on AF_VSOCK failed.
    #[error("cannot listen on vsock port {port}")]
    Vsock {
        /// The port.
        port: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Binding the unix socket failed.
    #[error("cannot listen on unix socket {path}")]
    Unix {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A listening socket of either family.
pub enum Listener {
    /// `AF_VSOCK`, any CID.
    Vsock(OwnedFd),
    /// A unix socket at a path.
    Unix(UnixListener),
}

impl Listener {
    /// Listens on `VMADDR_CID_ANY:port`.
    pub fn vsock(port: u32) -> Result<Self, ListenError> {
        listen_vsock(port)
            .map(Self::Vsock)
            .map_err(|source| ListenError::Vsock { port, source })
    }

    /// Listens on a unix socket at `path`, replacing a stale socket file.
    pub fn unix(path: &Path) -> Result<Self, ListenError> {
        let err = |source| ListenError::Unix {
            path: path.to_owned(),
            source,
        };
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        Ok(Self::Unix(listener))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Self::Vsock(fd) => {
                // SAFETY: null address pointers are allowed by accept4; the
                // fd is a listening socket we own.
                let rc = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if rc == -1 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(Conn::new(unsafe { OwnedFd::from_raw_fd(rc) }))
            }
            // std's accept sets close-on-exec.
            Self::Unix(l) => l.accept().map(|(s, _)| Conn::new(OwnedFd::from(s))),
        }
    }
}

/// A new close-on-exec AF_VSOCK stream socket.
pub(super) fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The vsock address `cid:port`.
pub(super) fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: all-zero is a valid sockaddr_vm; the fields that matter are
    // set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    addr
}

fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
