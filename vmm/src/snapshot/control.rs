//! The VM's control socket: one JSON request line in, one JSON reply line
//! out, per connection.
//!
//! ```text
//! -> {"op":"snapshot","resume":true}
//! <- {"ok":true,"snapshot":{"dir":"...","state_bytes":...,"memory_bytes_written":...,
//!     "pause_us":...,"total_us":...,"resumed":true}}
//! -> {"op":"ping"}
//! <- {"ok":true}
//! <- {"ok":false,"error":"..."}
//! ```
//!
//! A snapshot always goes to the configured directory
//! ([`crate::config::ControlConfig::snapshot_dir`]), never a path from the
//! client: the jail binds only that directory writable. The socket is
//! created owner-only, like the vsock socket's directory it usually sits in.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SnapshotReport, Snapshotter};

/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 4096;
/// How long a client gets to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Is the VMM serving.
    Ping,
    /// Snapshot the VM into the snapshot directory.
    Snapshot {
        /// Run on afterwards (else the VM stops once the snapshot is written).
        resume: bool,
    },
}

/// A control reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReport>,
}

impl ControlReply {
    fn error(message: String) -> Self {
        ControlReply {
            ok: false,
            error: Some(message),
            snapshot: None,
        }
    }
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<ControlRequest, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

/// Serves the control socket.
pub struct ControlServer {
    listener: UnixListener,
}

impl ControlServer {
    /// A server on an already bound `listener`.
    pub fn new(listener: UnixListener) -> Self {
        ControlServer { listener }
    }

    /// A duplicate of the listening socket, to shut it down (which ends
    /// [`ControlServer::run`]) when the VM stops.
    pub fn listener_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(self.listener.try_clone()?.into())
    }

    /// Accepts and answers clients one at a time until the VM stops.
    pub fn run(self, snapshotter: Arc<Snapshotter>) {
        for stream in self.listener.incoming() {
            if snapshotter.exit.stopping() {
                return;
            }
            match stream {
                Ok(stream) => self.serve(stream, &snapshotter),
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn serve(&self, stream: UnixStream, snapshotter: &Snapshotter) {
        if let Err(e) = stream.set_read_timeout(Some(REQUEST_TIMEOUT)) {
            tracing::warn!("control socket: {e}");
            return;
        }
        let mut line = Vec::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_until(b'\n', &mut line);
        let reply = match read {
            Err(e) => ControlReply::error(format!("cannot read the request: {e}")),
            Ok(_) if !line.ends_with(b"\n") => {
                ControlReply::error(format!("no request line within {MAX_REQUEST_BYTES} bytes"))
            }
            Ok(_) => match parse_request(&line) {
                Err(e) => ControlReply::error(e),
                Ok(request) => self.handle(request, snapshotter),
            },
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        let _ = (&stream).write_all(&out);
        // A snapshot that stops the VM does so once its reply is out.
        if reply.snapshot.as_ref().is_some_and(|r| !r.resumed) {
            snapshotter.stop();
        }
    }

    fn handle(&self, request: ControlRequest, snapshotter: &Snapshotter) -> ControlReply {
        match request {
            ControlRequest::Ping => ControlReply {
                ok: true,
                error: None,
                snapshot: None,
            },
            ControlRequest::Snapshot { resume } => match snapshotter.take(resume) {
                Ok(report) => {
                    tracing::info!(
                        "snapshot in {} taken in {} us",
                        report.dir.display(),
                        report.total_us
                    );
                    ControlReply {
                        ok: true,
                        error: None,
                        snapshot: Some(report),
                    }
                }
                Err(e) => ControlReply::error(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse_request(br#"{"op":"snapshot","resume":true}"#).unwrap(),
            ControlRequest::Snapshot { resume: true }
        );
        assert_eq!(
            parse_request(br#"{"op":"ping"}"#).unwrap(),
            ControlRequest::Ping
        );
        assert!(parse_request(br#"{"op":"snapshot"}"#).is_err());
        assert!(parse_request(br#"{"op":"snapshot","resume":true,"dir":"/etc"}"#).is_err());
        assert!(parse_request(br#"{"op":"reboot"}"#).is_err());
        assert!(parse_request(b"\xff").is_err());
    }
}
