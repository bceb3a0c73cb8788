//! The host side of kiln-vmm's hybrid vsock on tokio: connect to the VM's
//! unix socket and ask for a guest port (`CONNECT <port>\n` -> `OK <n>\n`),
//! the same exchange as `kiln_vmm::vm::hybrid_vsock::connect`, without a
//! blocking thread.

use std::io;
use std::path::Path;
use std::time::Duration;

use kiln_vmm::vm::hybrid_vsock::VsockConnectError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

/// Connects to guest `port` through the hybrid-vsock socket at `uds`; the
/// connect and the handshake together take at most `timeout`. Nothing
/// after the reply line is consumed.
pub(crate) async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VsockConnectError> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "no answer in time");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = tokio::time::timeout_at(deadline, UnixStream::connect(uds))
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| VsockConnectError::Connect {
            path: uds.display().to_string(),
            source,
        })?;
    let handshake = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        read_line(&mut stream).await
    };
    let reply = tokio::time::timeout_at(deadline, handshake)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| VsockConnectError::Handshake { port, source })?;
    match reply.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(VsockConnectError::Refused { port, reply }),
    }
}

/// Reads one line byte by byte (so nothing after it is consumed).
async fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "socket closed before a reply",
                ))
            }
            Err(e) => return Err(e),
        };
        if byte == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte);
        if line.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A fake VMM answering one connection with `reply`, then `payload`;
    /// returns the request line it read.
    fn serve(dir: &Path, reply: &'static [u8]) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(dir.join("v.sock")).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("request");
            let mut s = r.into_inner();
            let _ = s.write_all(reply).await;
            let _ = s.write_all(b"payload").await; // a refused client may be gone
            line
        })
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[tokio::test]
    async fn handshake_ok_leaves_the_payload_unread() {
        let dir = scratch("ok");
        let server = serve(&dir, b"OK 1073741824\n");
        let mut s = connect(&dir.join("v.sock"), 1024, Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(server.await.expect("server"), "CONNECT 1024\n");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.expect("payload");
        assert_eq!(&buf, b"payload");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn refused_long_silent_and_missing_sockets_fail_clearly() {
        let dir = scratch("bad");
        let server = serve(&dir, b"NO\n");
        let err = connect(&dir.join("v.sock"), 5, Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, VsockConnectError::Refused { port: 5, .. }),
            "{err}"
        );
        server.await.expect("server");
        std::fs::remove_file(dir.join("v.sock")).expect("rm");

        let server = serve(&dir, &[b'x'; 64]);
        let err = connect(&dir.join("v.sock"), 5, Duration::from_secs(5))
            .await
            .expect_err("too long");
        assert!(
            matches!(&err, VsockConnectError::Handshake { source, .. } if source.kind() == io::ErrorKind::InvalidData),
            "{err}"
        );
        server.await.expect("server");
        std::fs::remove_file(dir.join("v.sock")).expect("rm");

        // A VMM that accepts and never answers: the timeout ends the wait.
        let listener = UnixListener::bind(dir.join("v.sock")).expect("bind");
        let err = connect(&dir.join("v.sock"), 5, Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(
            matches!(&err, VsockConnectError::Handshake { source, .. } if source.kind() == io::ErrorKind::TimedOut),
            "{err}"
        );
        drop(listener);

        let err = connect(&dir.join("none.sock"), 5, Duration::from_secs(1))
            .await
            .expect_err("missing");
        assert!(matches!(err, VsockConnectError::Connect { .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
