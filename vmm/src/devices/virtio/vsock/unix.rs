//! Host unix-socket helpers: the `CONNECT <port>` handshake line and a
//! connect that never blocks the event loop.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::MAX_CONNECT_LINE;

/// Why a CONNECT line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectLineError {
    /// Longer than [`MAX_CONNECT_LINE`] without a newline.
    #[error("CONNECT line too long")]
    TooLong,
    /// Not `CONNECT <port>`.
    #[error("malformed CONNECT line")]
    Malformed,
    /// The port is not a decimal u32.
    #[error("invalid port in CONNECT line")]
    BadPort,
}

/// Accumulates one byte of a CONNECT line. Returns `Ok(Some(port))` once the
/// newline arrives, `Ok(None)` while more is needed.
pub fn push_connect_byte(line: &mut Vec<u8>, byte: u8) -> Result<Option<u32>, ConnectLineError> {
    if byte == b'\n' {
        return parse_connect_line(line).map(Some);
    }
    // The newline must fit within MAX_CONNECT_LINE too.
    if line.len() + 1 >= MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    line.push(byte);
    Ok(None)
}

/// Parses `CONNECT <port>` (without the newline): one space, decimal digits
/// only, nothing else.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() >= MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let digits = line
        .strip_prefix(b"CONNECT ")
        .ok_or(ConnectLineError::Malformed)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::BadPort);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(ConnectLineError::BadPort)
}

/// The line sent to a host client once the guest accepted its connection.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

/// Connects to the unix stream socket at `path` without blocking: a
/// listener whose backlog is full is an error (EAGAIN), not a wait.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad unix socket path",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that lives
    // across the call, and `owned` is an open socket.
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&owned),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn feed(s: &[u8]) -> Result<Option<u32>, ConnectLineError> {
        let mut line = Vec::new();
        let mut last = Ok(None);
        for &b in s {
            last = push_connect_byte(&mut line, b);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        last
    }

    #[test]
    fn connect_lines() {
        assert_eq!(feed(b"CONNECT 52\n"), Ok(Some(52)));
        assert_eq!(feed(b"CONNECT 4294967295\n"), Ok(Some(u32::MAX)));
        assert_eq!(feed(b"CONNECT 0\n"), Ok(Some(0)));
        // Missing newline: still waiting, never a port.
        assert_eq!(feed(b"CONNECT 52"), Ok(None));
        // Too long, with or without a newline.
        assert_eq!(feed(&[b'C'; 100]), Err(ConnectLineError::TooLong));
        assert_eq!(
            feed(b"CONNECT 0000000000000000000000052\n"),
            Err(ConnectLineError::TooLong)
        );
        // Non-numeric, signed, overflowing or empty ports.
        assert_eq!(feed(b"CONNECT abc\n"), Err(ConnectLineError::BadPort));
        assert_eq!(feed(b"CONNECT -1\n"), Err(ConnectLineError::BadPort));
        assert_eq!(feed(b"CONNECT +1\n"), Err(ConnectLineError::BadPort));
        assert_eq!(
            feed(b"CONNECT 4294967296\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(feed(b"CONNECT \n"), Err(ConnectLineError::BadPort));
        // Extra spaces, CR, wrong case, missing keyword.
        assert_eq!(feed(b"CONNECT  52\n"), Err(ConnectLineError::BadPort));
        assert_eq!(feed(b"CONNECT 52 \n"), Err(ConnectLineError::BadPort));
        assert_eq!(feed(b" CONNECT 52\n"), Err(ConnectLineError::Malformed));
        assert_eq!(feed(b"CONNECT 52\r\n"), Err(ConnectLineError::BadPort));
        assert_eq!(feed(b"connect 52\n"), Err(ConnectLineError::Malformed));
        assert_eq!(feed(b"CONNECT52\n"), Err(ConnectLineError::Malformed));
        assert_eq!(feed(b"\n"), Err(ConnectLineError::Malformed));
        assert_eq!(feed(b"CONNECT 5\x002\n"), Err(ConnectLineError::BadPort));
    }

    #[test]
    fn ok_line_format() {
        assert_eq!(ok_line(1073741824), "OK 1073741824\n");
    }

    #[test]
    fn nonblocking_connect() {
        let dir = std::env::temp_dir().join(format!("kiln-unix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        assert!(connect_nonblocking(&path).is_err());
        let listener = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        drop(s);
        let long = dir.join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
