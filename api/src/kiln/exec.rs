//! Running a command in a sandbox, like `tokio::process::Command`: a
//! builder, then [`ExecBuilder::spawn`] (a stream of events) or
//! [`ExecBuilder::output`] (everything at the end).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use crate::backend::{Backend, ExecEvents};
use crate::model::{ExecEvent, ExecResult, ExecSpec};
use crate::{Error, Result};

/// A command to run.
#[must_use = "an exec does nothing until spawned"]
pub struct ExecBuilder {
    backend: Arc<dyn Backend>,
    sandbox: String,
    spec: ExecSpec,
    key: Option<String>,
}

impl ExecBuilder {
    pub(super) fn new(backend: Arc<dyn Backend>, sandbox: String, argv: Vec<String>) -> Self {
        ExecBuilder {
            backend,
            sandbox,
            spec: ExecSpec {
                argv,
                ..ExecSpec::default()
            },
            key: None,
        }
    }

    /// Sets an environment variable (on top of the sandbox's defaults).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.spec.cwd = Some(dir.into());
        self
    }

    /// Gives the program these bytes on stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        match String::from_utf8(bytes.into()) {
            Ok(text) => {
                self.spec.stdin = Some(text);
                self.spec.stdin_b64 = None;
            }
            Err(e) => {
                self.spec.stdin = None;
                self.spec.stdin_b64 = Some(crate::b64::encode(e.as_bytes()));
            }
        }
        self
    }

    /// Kills the program (its whole process group) after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// An idempotency key: a repeat with the same key replays the first
    /// exec's result instead of running it again.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Starts the command; its events stream as they happen. Dropping the
    /// [`Exec`] aborts the command.
    pub async fn spawn(self) -> Result<Exec> {
        let events = self.backend.exec(self.sandbox, self.spec, self.key).await?;
        Ok(Exec {
            events,
            id: None,
            done: false,
        })
    }

    /// Runs the command to its end; collects its output.
    pub async fn output(self) -> Result<ExecOutput> {
        self.spawn().await?.output().await
    }
}

/// A running command: a stream of [`ExecEvent`]s ending with `Exited` (or
/// an error).
pub struct Exec {
    events: ExecEvents,
    id: Option<String>,
    done: bool,
}

/// A finished command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub result: ExecResult,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.result.exit_code == Some(0)
    }
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Exec {
    pub(crate) fn from_events(events: ExecEvents) -> Self {
        Exec {
            events,
            id: None,
            done: false,
        }
    }

    /// The exec's id, once the `Started` event has been read.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Reads the rest of the stream; collects the output.
    pub async fn output(mut self) -> Result<ExecOutput> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = self.next().await {
            match event? {
                ExecEvent::Stdout { data, data_b64, .. } => {
                    stdout.extend(ExecEvent::bytes(&data, &data_b64));
                }
                ExecEvent::Stderr { data, data_b64, .. } => {
                    stderr.extend(ExecEvent::bytes(&data, &data_b64));
                }
                ExecEvent::Exited { result, .. } => {
                    return Ok(ExecOutput {
                        result,
                        stdout,
                        stderr,
                    })
                }
                ExecEvent::Started { .. } | ExecEvent::Keepalive { .. } => {}
                ExecEvent::Error { .. } => unreachable!("turned into Err by poll_next"),
            }
        }
        Err(Error::Guest(
            "the exec stream ended before the program's exit".into(),
        ))
    }
}

impl Stream for Exec {
    type Item = Result<ExecEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.events.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(match item {
            Some(Ok(ExecEvent::Started { seq, exec_id })) => {
                self.id = Some(exec_id.clone());
                Some(Ok(ExecEvent::Started { seq, exec_id }))
            }
            Some(Ok(ExecEvent::Error { error, .. })) => {
                self.done = true;
                Some(Err(Error::from_body(crate::ErrorBody { error })))
            }
            Some(Ok(e @ ExecEvent::Exited { .. })) => {
                self.done = true;
                Some(Ok(e))
            }
            other => other,
        })
    }
}
