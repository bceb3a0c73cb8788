//! Firecracker's API over its unix socket: one HTTP/1.1 request per
//! connection, a JSON body, the status checked (2xx), the error body
//! (bounded) quoted when it is not.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest response read (Firecracker's are a few hundred bytes).
const MAX_RESPONSE: u64 = 64 * 1024;

/// Errors from one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket did not take the request or the response broke off.
    #[error("{method} {path}: {source}")]
    Io {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Firecracker answered with a non-2xx status.
    #[error("{method} {path}: {status}")]
    Refused {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: &'static str,
        /// The status line and body.
        status: String,
    },
    /// The API socket did not appear in time.
    #[error("the API socket {0} did not appear within {1:?}")]
    NoSocket(String, Duration),
}

/// Waits up to `timeout` for the API socket to accept connections.
pub fn wait_for_socket(sock: &Path, timeout: Duration) -> Result<(), ApiError> {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(sock).is_err() {
        if Instant::now() > deadline {
            return Err(ApiError::NoSocket(sock.display().to_string(), timeout));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Sends `method path` with `body`, waits up to `timeout` for the answer.
pub fn call(
    sock: &Path,
    method: &'static str,
    path: &'static str,
    body: &Value,
    timeout: Duration,
) -> Result<(), ApiError> {
    let io = |source| ApiError::Io {
        method,
        path,
        source,
    };
    let mut stream = UnixStream::connect(sock).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let response = read_response(&mut stream).map_err(io)?;
    let status_line = response.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') {
        return Ok(());
    }
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b.trim());
    Err(ApiError::Refused {
        method,
        path,
        status: format!("{status_line} {body}"),
    })
}

/// Reads one response: the headers, then `Content-Length` bytes of body.
fn read_response(stream: &mut impl Read) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut limited = stream.take(MAX_RESPONSE);
    let mut buf = [0u8; 4096];
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = complete_at(&got) {
            got.truncate(end);
            break;
        }
    }
    if got.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no response",
        ));
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Where a complete response ends in `got`, once its headers and the body
/// they announce are in.
fn complete_at(got: &[u8]) -> Option<usize> {
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (got.len() >= head_end + length).then_some(head_end + length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_once_its_body_is_in() {
        let head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(complete_at(head), None);
        let mut full = head.to_vec();
        full.extend_from_slice(b"oops!extra");
        assert_eq!(complete_at(&full), Some(head.len() + 5));
        assert_eq!(
            complete_at(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some(27),
            "no body without a length"
        );
    }

    #[test]
    fn a_refusal_quotes_status_and_body() {
        let dir = std::env::temp_dir().join(format!("fc-api-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).expect("read");
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = "{\"fault_message\":\"bad\"}";
            let _ = write!(
                s,
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            req
        });
        let err = call(
            &sock,
            "PUT",
            "/snapshot/load",
            &serde_json::json!({"a": 1}),
            Duration::from_secs(5),
        )
        .expect_err("400 is refused");
        let req = server.join().expect("server");
        assert!(req.starts_with("PUT /snapshot/load HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
        let text = err.to_string();
        assert!(
            text.contains("400 Bad Request") && text.contains("bad"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
