//! AF_VSOCK client sockets, for peers that use the kernel's vhost-vsock
//! (QEMU, Firecracker's in-kernel mode) rather than kiln's unix-socket vsock.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::time::Duration;

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (linux/vm_sockets.h), old timeval layout.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// Sets a `struct timeval` socket option.
fn set_timeval(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    d: Duration,
) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to `cid:port`, giving up on this attempt after `timeout`; reads
/// and writes on the returned socket time out after `io_timeout`.
/// Returns the socket as a `File` (read/write on the socket fd).
pub fn connect(cid: u32, port: u32, timeout: Duration, io_timeout: Duration) -> io::Result<File> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; File closes it on drop.
    let file = unsafe { File::from_raw_fd(fd) };
    set_timeval(fd, libc::AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, timeout)?;
    set_timeval(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, io_timeout)?;
    set_timeval(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, io_timeout)?;
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
