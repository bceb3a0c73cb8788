//! The one module that talks to a guest agent, on tokio.
//!
//! One connection per operation (the agent's protocol), through the async
//! client `kiln_agent::async_client`. A VM's agent is reached through
//! kiln-vmm's hybrid vsock socket ([`vsock`]: `CONNECT 1024`), a host
//! agent through its plain unix socket. Every wait is bounded: the connect
//! and handshake by [`CONNECT_TIMEOUT`], and each operation by an idle
//! timeout on the connection's reads and writes (a read or write that makes
//! no progress for that long fails as [`AgentError::Unresponsive`]).
//! Dropping an operation's future drops its connection, which ends it in
//! the agent (an exec is killed, an upload discarded, an attach ends; a
//! started process runs on).

mod files;
mod process;
mod vsock;

pub(crate) use process::{attach_on, AttachEvents};

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use kiln_agent::async_client::{self, ClientError, ExecEvent};
use kiln_agent::client::files::FilesError;
use kiln_agent::protocol::{ExecRequest, ExitStatus, Pong, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock::VsockConnectError;
use tokio::io::AsyncRead;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_io_timeout::TimeoutStream;

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
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a short request (ping, stat, list, mkdir, signal, ...).
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

/// A failed client call, or an unresponsive guest when the connection's
/// idle timeout `idle` fired.
fn client_error(e: ClientError, idle: Option<Duration>) -> AgentError {
    match idle {
        Some(d) if is_socket_timeout(&e) => AgentError::Unresponsive(d),
        _ => AgentError::Agent(e),
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

/// One connection to an agent: reads and writes fail with `TimedOut` after
/// the idle timeout it was opened with.
pub(crate) type Conn = Pin<Box<TimeoutStream<UnixStream>>>;

impl AgentAddr {
    /// Opens a connection (at most [`CONNECT_TIMEOUT`]) whose reads and
    /// writes may each wait at most `idle` (`None`: without bound, for an
    /// exec without a timeout).
    pub(crate) async fn connect(&self, idle: Option<Duration>) -> Result<Conn, AgentError> {
        let start = std::time::Instant::now();
        let stream = match self {
            AgentAddr::HybridVsock(uds) => {
                vsock::connect(uds, AGENT_VSOCK_PORT, CONNECT_TIMEOUT).await?
            }
            AgentAddr::Unix(path) => {
                tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
                    .map_err(AgentError::ConnectUnix)?
            }
        };
        tracing::trace!(
            took_us = start.elapsed().as_micros() as u64,
            "agent connection"
        );
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(idle);
        stream.set_write_timeout(idle);
        Ok(Box::pin(stream))
    }

    /// Whether the socket file exists yet (a booting VMM creates it).
    pub(crate) fn socket_exists(&self) -> bool {
        match self {
            AgentAddr::HybridVsock(p) | AgentAddr::Unix(p) => p.exists(),
        }
    }

    /// Pings the agent, waiting at most `timeout` for its answer.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, AgentError> {
        let mut conn = self.connect(Some(timeout)).await?;
        async_client::ping(&mut conn)
            .await
            .map_err(|e| client_error(e, Some(timeout)))
    }

    /// Asks the agent to power the VM off (a host agent exits).
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), AgentError> {
        let mut conn = self.connect(Some(timeout)).await?;
        async_client::shutdown(&mut conn)
            .await
            .map_err(|e| client_error(e, Some(timeout)))
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
        let idle = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms).saturating_add(EXEC_TIMEOUT_GRACE));
        let conn = self.connect(idle).await?;
        let stdin = stdin.filter(|_| request.stdin);
        let mut events = std::pin::pin!(async_client::exec(conn, &request, stdin));
        while let Some(event) = events.next().await {
            // A reader that left only loses the output; the exit still
            // comes back to the caller.
            match event.map_err(|e| client_error(e, idle))? {
                ExecEvent::Stdout(b) => {
                    let _ = output.send(ExecOutput::Stdout(b)).await;
                }
                ExecEvent::Stderr(b) => {
                    let _ = output.send(ExecOutput::Stderr(b)).await;
                }
                ExecEvent::Exit(status) => return Ok(status),
            }
        }
        Err(AgentError::Agent(ClientError::Closed))
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
        assert!(matches!(
            client_error(
                wrapped(io::ErrorKind::TimedOut),
                Some(Duration::from_secs(1))
            ),
            AgentError::Unresponsive(_)
        ));
        assert!(matches!(
            client_error(wrapped(io::ErrorKind::TimedOut), None),
            AgentError::Agent(_)
        ));
    }

    #[tokio::test]
    async fn a_silent_agent_is_unresponsive_after_the_idle_timeout() {
        let dir = std::env::temp_dir().join(format!("kiln-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.sock");
        // Accepts and never answers.
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let addr = AgentAddr::Unix(path);
        let err = addr
            .ping(Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert!(matches!(err, AgentError::Unresponsive(_)), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
