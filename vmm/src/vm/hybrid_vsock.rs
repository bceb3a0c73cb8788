//! Host side of the hybrid vsock: connect to a VM's unix socket and ask for
//! a guest port (`CONNECT <port>\n` -> `OK <n>\n`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

/// Errors from connecting to a guest port.
#[derive(Debug, thiserror::Error)]
pub enum VsockConnectError {
    /// The VM has no vsock device.
    #[error("the vm has no vsock device")]
    NoVsock,
    /// The unix socket could not be reached.
    #[error("cannot connect to vsock socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Sending the request or reading the reply failed (a timeout, or the
    /// VMM closed the socket because the guest refused the port).
    #[error("vsock handshake for guest port {port} failed: {source}")]
    Handshake {
        /// Guest port.
        port: u32,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The VMM answered something other than `OK <n>`.
    #[error("vsock handshake for guest port {port}: unexpected reply {reply:?}")]
    Refused {
        /// Guest port.
        port: u32,
        /// The reply line.
        reply: String,
    },
}

/// Connects to guest `port` through the VM's hybrid-vsock socket at `uds`,
/// waiting at most `timeout` for the handshake. Returns the stream, in
/// blocking mode without timeouts, ready to carry the connection's bytes.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockConnectError> {
    connect_with_port(uds, port, timeout).map(|(stream, _)| stream)
}

/// [`connect`], also returning the host port the VMM gave the connection
/// (the `n` of its `OK <n>` reply).
pub fn connect_with_port(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<(UnixStream, u32), VsockConnectError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| VsockConnectError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    let hs = |source| VsockConnectError::Handshake { port, source };
    stream.set_read_timeout(Some(timeout)).map_err(hs)?;
    stream.set_write_timeout(Some(timeout)).map_err(hs)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(hs)?;
    let reply = read_line(&mut stream).map_err(hs)?;
    let Some(host_port) = reply
        .strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
    else {
        return Err(VsockConnectError::Refused { port, reply });
    };
    stream.set_read_timeout(None).map_err(hs)?;
    stream.set_write_timeout(None).map_err(hs)?;
    Ok((stream, host_port))
}

/// Reads one line byte by byte (so nothing after it is consumed).
fn read_line(stream: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "socket closed before a reply",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn serve(reply: &'static str) -> (std::path::PathBuf, std::thread::JoinHandle<String>) {
        let dir =
            std::env::temp_dir().join(format!("kiln-hv-{}-{}", std::process::id(), reply.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            (&s).write_all(reply.as_bytes()).unwrap();
            let _ = (&s).write_all(b"payload"); // the refused client may be gone
            line
        });
        (path, t)
    }

    #[test]
    fn handshake_ok_leaves_payload_unread() {
        let (path, t) = serve("OK 1073741824\n");
        let (mut s, host_port) = connect_with_port(&path, 1024, Duration::from_secs(5)).unwrap();
        assert_eq!(host_port, 1 << 30);
        assert_eq!(t.join().unwrap(), "CONNECT 1024\n");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn handshake_refused_and_missing_socket() {
        let (path, t) = serve("NO\n");
        let err = connect(&path, 5, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, VsockConnectError::Refused { port: 5, .. }),
            "{err}"
        );
        t.join().unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        let err = connect(
            Path::new("/nonexistent/kiln.sock"),
            5,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, VsockConnectError::Connect { .. }));
    }
}
