//! The one module that talks to a guest agent.
//!
//! It drives today's blocking client (`kiln_agent::client`) on tokio's
//! blocking pool, one connection per operation, so the rest of the crate is
//! async. Dropping an operation's future shuts its connection down, which
//! ends the blocking side at once (the agent kills an exec whose host hung
//! up and discards an unfinished upload). Switching to an async agent client
//! is a change to this file only.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_agent::client::files::{self, FilesError};
use kiln_agent::client::{self, ClientError};
use kiln_agent::protocol::files::{Entry, FileDigest};
use kiln_agent::protocol::{ExecRequest, ExitStatus, Pong, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock::{self, VsockConnectError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

/// How to reach a VM's agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum AgentAddr {
    /// A kiln-vmm hybrid vsock socket (`CONNECT <port>` handshake first).
    HybridVsock(PathBuf),
    /// An agent listening on a plain unix socket (`kiln-agent --listen-unix`).
    Unix(PathBuf),
}

/// Timeout for one connection attempt (including the vsock handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a short request (ping, stat, list, mkdir, ...).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a file transfer may make no progress before the guest counts as
/// unresponsive (generous: the nested testbed has stalled single transfers
/// for over a minute).
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long past an exec's own timeout the host waits for its result: the
/// agent kills the program at the timeout and answers at once, so silence
/// beyond this means the guest itself is stuck.
pub const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(30);

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting (or the vsock handshake) failed.
    #[error("connecting to the guest agent: {0}")]
    Connect(#[from] VsockConnectError),
    /// Connecting to a plain unix socket failed.
    #[error("connecting to the agent socket: {0}")]
    ConnectUnix(#[source] io::Error),
    /// The agent protocol failed or the agent answered with an error.
    #[error("guest agent: {0}")]
    Agent(#[from] ClientError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Files {
        /// Operation.
        op: &'static str,
        /// Guest path.
        path: String,
        /// Underlying error (boxed: it is large and rare).
        #[source]
        source: Box<FilesError>,
    },
    /// The guest stopped answering mid-request: no frame arrived (or none
    /// could be sent) for this long.
    #[error("the guest stopped answering: no progress for {0:?}")]
    Unresponsive(Duration),
    /// Setting up the connection (timeouts, cloning) failed.
    #[error("agent connection: {0}")]
    Socket(#[source] io::Error),
    /// The operation was abandoned (its future dropped or the runtime ended).
    #[error("the agent operation was cancelled")]
    Cancelled,
}

impl AgentError {
    /// The agent's error code, when the agent refused the request.
    pub fn agent_code(&self) -> Option<kiln_agent::protocol::ErrorCode> {
        match self {
            Self::Agent(ClientError::Agent { code, .. }) => Some(*code),
            Self::Files { source, .. } => source.agent_code(),
            _ => None,
        }
    }
}

/// Whether `e` (or any error it wraps) is a socket timeout.
pub(crate) fn is_socket_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A failed files call, or an unresponsive guest when the socket timed out.
fn files_error(op: &'static str, path: &str, source: FilesError, idle: Duration) -> AgentError {
    if is_socket_timeout(&source) {
        return AgentError::Unresponsive(idle);
    }
    AgentError::Files {
        op,
        path: path.to_string(),
        source: Box::new(source),
    }
}

/// A chunk of an exec's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes the program wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the program wrote to stderr.
    Stderr(Vec<u8>),
}

/// The connection of a running operation, so dropping the operation's
/// future can shut it down.
#[derive(Default)]
struct Slot {
    stream: Option<UnixStream>,
    cancelled: bool,
}

/// Shuts the operation's connection down when dropped (the future was
/// abandoned, or finished: then the connection is done anyway).
struct AbortOnDrop(Arc<Mutex<Slot>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.cancelled = true;
        if let Some(s) = slot.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl AgentAddr {
    fn connect(&self) -> Result<UnixStream, AgentError> {
        match self {
            AgentAddr::HybridVsock(uds) => Ok(hybrid_vsock::connect(
                uds,
                AGENT_VSOCK_PORT,
                CONNECT_TIMEOUT,
            )?),
            AgentAddr::Unix(path) => UnixStream::connect(path).map_err(AgentError::ConnectUnix),
        }
    }

    /// Whether the socket file exists yet (a booting VMM creates it).
    pub(crate) fn socket_exists(&self) -> bool {
        match self {
            AgentAddr::HybridVsock(p) | AgentAddr::Unix(p) => p.exists(),
        }
    }

    /// Runs `op` on a fresh connection on the blocking pool, with
    /// `timeout` on every read and write.
    async fn run<T, F>(&self, timeout: Option<Duration>, op: F) -> Result<T, AgentError>
    where
        T: Send + 'static,
        F: FnOnce(&mut UnixStream) -> Result<T, AgentError> + Send + 'static,
    {
        let addr = self.clone();
        let slot = Arc::new(Mutex::new(Slot::default()));
        let guard = AbortOnDrop(Arc::clone(&slot));
        let task = tokio::task::spawn_blocking(move || {
            let mut stream = addr.connect()?;
            stream
                .set_read_timeout(timeout)
                .and_then(|()| stream.set_write_timeout(timeout))
                .map_err(AgentError::Socket)?;
            {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                if slot.cancelled {
                    return Err(AgentError::Cancelled);
                }
                slot.stream = Some(stream.try_clone().map_err(AgentError::Socket)?);
            }
            op(&mut stream)
        });
        let result = task.await.map_err(|_| AgentError::Cancelled)?;
        drop(guard);
        result
    }

    /// Pings the agent, waiting at most `timeout` for its answer.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, AgentError> {
        self.run(Some(timeout), |s| Ok(client::ping(s)?)).await
    }

    /// Asks the agent to power the VM off (a host agent exits).
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), AgentError> {
        self.run(Some(timeout), |s| Ok(client::shutdown(s)?)).await
    }

    /// Runs a program, sending its output to `output` as it arrives (a full
    /// channel holds the agent connection back, so memory stays bounded).
    /// `stdin` is sent when `request.stdin` is set. Without a timeout in the
    /// request the wait for output is unbounded, as the program may be
    /// silent for as long as it likes.
    pub async fn exec(
        &self,
        request: ExecRequest,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
        output: mpsc::Sender<ExecOutput>,
    ) -> Result<ExitStatus, AgentError> {
        let guard = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms).saturating_add(EXEC_TIMEOUT_GRACE));
        let stdin: Box<dyn Read + Send> = match stdin {
            Some(source) if request.stdin => Box::new(SyncIoBridge::new(source)),
            _ => Box::new(io::empty()),
        };
        self.run(guard, move |reader| {
            let writer = reader.try_clone().map_err(AgentError::Socket)?;
            let err_tx = output.clone();
            client::exec_duplex(
                reader,
                writer,
                &request,
                stdin,
                |b| {
                    let _ = output.blocking_send(ExecOutput::Stdout(b.to_vec()));
                },
                |b| {
                    let _ = err_tx.blocking_send(ExecOutput::Stderr(b.to_vec()));
                },
            )
            .map_err(|e| match guard {
                Some(d) if is_socket_timeout(&e) => AgentError::Unresponsive(d),
                _ => AgentError::Agent(e),
            })
        })
        .await
    }

    /// Streams `source` into the guest file `path` (created with `mode`,
    /// parents made, replaced atomically); returns its size and SHA-256.
    pub async fn upload(
        &self,
        path: String,
        mode: Option<u32>,
        source: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<FileDigest, AgentError> {
        let source = SyncIoBridge::new(source);
        self.run(Some(TRANSFER_IDLE_TIMEOUT), move |s| {
            files::upload(s, &path, mode, source)
                .map_err(|e| files_error("upload to", &path, e, TRANSFER_IDLE_TIMEOUT))
        })
        .await
    }

    /// Streams the guest file `path` into `sink`, checking its SHA-256.
    pub async fn download(
        &self,
        path: String,
        sink: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Result<FileDigest, AgentError> {
        let mut sink = SyncIoBridge::new(sink);
        self.run(Some(TRANSFER_IDLE_TIMEOUT), move |s| {
            let got = files::download(s, &path, &mut sink)
                .map_err(|e| files_error("download of", &path, e, TRANSFER_IDLE_TIMEOUT))?;
            // Shut the sink down so its reader sees the end.
            sink.shutdown().map_err(|e| AgentError::Files {
                op: "download of",
                path: path.clone(),
                source: Box::new(FilesError::Sink(e)),
            })?;
            Ok(got)
        })
        .await
    }

    /// Lists a directory.
    pub async fn list_dir(&self, path: String) -> Result<Vec<Entry>, AgentError> {
        self.run(Some(REQUEST_TIMEOUT), move |s| {
            files::list_dir(s, &path).map_err(|e| files_error("list", &path, e, REQUEST_TIMEOUT))
        })
        .await
    }

    /// Describes a path (a symlink itself, not its target).
    pub async fn stat(&self, path: String) -> Result<Entry, AgentError> {
        self.run(Some(REQUEST_TIMEOUT), move |s| {
            files::stat(s, &path).map_err(|e| files_error("stat", &path, e, REQUEST_TIMEOUT))
        })
        .await
    }

    /// Makes a directory (`parents`: and missing parents; an existing
    /// directory is fine then).
    pub async fn mkdir(
        &self,
        path: String,
        parents: bool,
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        self.run(Some(REQUEST_TIMEOUT), move |s| {
            files::mkdir(s, &path, parents, mode)
                .map_err(|e| files_error("mkdir", &path, e, REQUEST_TIMEOUT))
        })
        .await
    }

    /// Moves `from` to `to`.
    pub async fn rename(&self, from: String, to: String) -> Result<(), AgentError> {
        self.run(Some(REQUEST_TIMEOUT), move |s| {
            files::rename(s, &from, &to)
                .map_err(|e| files_error("rename", &from, e, REQUEST_TIMEOUT))
        })
        .await
    }

    /// Removes a path (`recursive` for a non-empty directory).
    pub async fn remove(&self, path: String, recursive: bool) -> Result<(), AgentError> {
        self.run(Some(REQUEST_TIMEOUT), move |s| {
            files::remove(s, &path, recursive)
                .map_err(|e| files_error("remove", &path, e, REQUEST_TIMEOUT))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use kiln_agent::protocol::{FrameError, ProtocolError};

    use super::*;

    #[test]
    fn socket_timeouts_are_found_through_the_error_chain() {
        let wrapped = |kind| {
            ClientError::Protocol(ProtocolError::Frame(FrameError::Io(io::Error::from(kind))))
        };
        assert!(is_socket_timeout(&wrapped(io::ErrorKind::WouldBlock)));
        assert!(is_socket_timeout(&wrapped(io::ErrorKind::TimedOut)));
        assert!(!is_socket_timeout(&wrapped(io::ErrorKind::BrokenPipe)));
        assert!(!is_socket_timeout(&ClientError::Closed));
    }
}
