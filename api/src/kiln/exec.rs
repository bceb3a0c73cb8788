//! Running a command in a sandbox, like `tokio::process::Command`: a
//! builder, then [`ExecBuilder::spawn`] (a stream of events),
//! [`ExecBuilder::output`] (everything at the end) or
//! [`ExecBuilder::detach`] (just its id). The program lives in the
//! sandbox's agent, not in the stream: [`ExecControl`] signals it and
//! writes its stdin, and [`Sandbox::attach`](super::Sandbox::attach) reads
//! its output again from any sequence number.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::backend::{Backend, ExecEvents};
use crate::model::{ExecEvent, ExecInfo, ExecResult, ExecSpec, StdinWritten};
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
    /// exec (its output from the start while the agent holds it, else its
    /// result) instead of running it again.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Keeps stdin open after the bytes given with [`ExecBuilder::stdin`]
    /// (if any), for [`ExecControl::write_stdin`], until
    /// [`ExecControl::close_stdin`]. Without it stdin ends after them.
    pub fn keep_stdin_open(mut self) -> Self {
        self.spec.stdin_open = true;
        self
    }

    /// Kills the program (SIGKILL to its process group) when the [`Exec`]
    /// is dropped before the program ended. By default it runs on, and
    /// [`Sandbox::attach`](super::Sandbox::attach) finds it again.
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.spec.kill_on_disconnect = kill;
        self
    }

    /// Starts the command; its events stream as they happen. The program
    /// does not depend on the [`Exec`]: dropping it ends only the stream
    /// (unless [`ExecBuilder::kill_on_drop`]).
    pub async fn spawn(self) -> Result<Exec> {
        let mut events = self
            .backend
            .exec(self.sandbox.clone(), self.spec, self.key)
            .await?;
        let started = events.next().await;
        let exec_id = match &started {
            Some(Ok(ExecEvent::Started { exec_id, .. })) => exec_id.clone(),
            Some(Ok(ExecEvent::Error { error, .. })) => {
                return Err(Error::from_body(crate::ErrorBody {
                    error: error.clone(),
                }))
            }
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(other)) => {
                return Err(Error::Internal(format!(
                    "an exec stream began with {other:?}, not started"
                )))
            }
            None => return Err(Error::Guest("the exec stream ended at once".into())),
        };
        // The stream still begins with `started`.
        let events = futures_util::stream::iter(started).chain(events).boxed();
        Ok(Exec::new(
            events,
            ExecControl::new(self.backend, self.sandbox, exec_id),
        ))
    }

    /// Starts the command and returns at once, with its id; follow it
    /// with [`Sandbox::attach`](super::Sandbox::attach).
    pub async fn detach(self) -> Result<ExecInfo> {
        self.backend
            .start_exec(self.sandbox, self.spec, self.key)
            .await
    }

    /// Runs the command to its end; collects its output.
    pub async fn output(self) -> Result<ExecOutput> {
        self.spawn().await?.output().await
    }
}

/// A command in a sandbox: a stream of [`ExecEvent`]s (output with its
/// sequence numbers, a `gap` where output was evicted before it was read)
/// ending with `Exited` (or an error; `CaughtUp` for
/// [`Sandbox::output_since`](super::Sandbox::output_since)).
pub struct Exec {
    events: ExecEvents,
    control: ExecControl,
    done: bool,
}

/// A finished command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub result: ExecResult,
    /// Everything on stdout that was read.
    pub stdout: Vec<u8>,
    /// Everything on stderr that was read.
    pub stderr: Vec<u8>,
    /// Output chunks that were evicted before they were read (the agent
    /// keeps the newest output of each process, 1 MiB by default): 0 when
    /// `stdout` and `stderr` are complete.
    pub missed_chunks: u64,
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
            .field("id", &self.control.exec)
            .finish_non_exhaustive()
    }
}

impl Exec {
    pub(crate) fn new(events: ExecEvents, control: ExecControl) -> Self {
        Exec {
            events,
            control,
            done: false,
        }
    }

    /// The exec's id.
    pub fn id(&self) -> &str {
        &self.control.exec
    }

    /// A handle that signals the program and writes its stdin; it can be
    /// cloned and outlives the stream.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// Reads the rest of the stream; collects the output.
    pub async fn output(self) -> Result<ExecOutput> {
        collect_output(self).await
    }
}

/// Reads exec events to the exit; collects the output.
pub(crate) async fn collect_output(
    mut events: impl Stream<Item = Result<ExecEvent>> + Unpin,
) -> Result<ExecOutput> {
    let (mut stdout, mut stderr, mut missed) = (Vec::new(), Vec::new(), 0u64);
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Stdout { data, data_b64, .. } => {
                stdout.extend(ExecEvent::bytes(&data, &data_b64));
            }
            ExecEvent::Stderr { data, data_b64, .. } => {
                stderr.extend(ExecEvent::bytes(&data, &data_b64));
            }
            ExecEvent::Gap { seq, first_seq } => {
                missed += seq.saturating_sub(first_seq) + 1;
            }
            ExecEvent::Exited { result, .. } => {
                return Ok(ExecOutput {
                    result,
                    stdout,
                    stderr,
                    missed_chunks: missed,
                })
            }
            ExecEvent::CaughtUp { .. } => {
                return Err(Error::Conflict(
                    "the exec still runs: its output so far was read".into(),
                ))
            }
            ExecEvent::Error { error, .. } => {
                return Err(Error::from_body(crate::ErrorBody { error }))
            }
            ExecEvent::Started { .. } | ExecEvent::Keepalive { .. } => {}
        }
    }
    Err(Error::Guest(
        "the exec stream ended before the program's exit".into(),
    ))
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
            Some(Ok(ExecEvent::Error { error, .. })) => {
                self.done = true;
                Some(Err(Error::from_body(crate::ErrorBody { error })))
            }
            Some(Ok(e @ (ExecEvent::Exited { .. } | ExecEvent::CaughtUp { .. }))) => {
                self.done = true;
                Some(Ok(e))
            }
            other => other,
        })
    }
}

/// Controls one exec: signals, stdin. Cheap to clone; works whether or not
/// anyone reads the exec's output.
#[derive(Clone)]
pub struct ExecControl {
    backend: Arc<dyn Backend>,
    sandbox: String,
    exec: String,
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl")
            .field("sandbox", &self.sandbox)
            .field("exec", &self.exec)
            .finish()
    }
}

impl ExecControl {
    pub(crate) fn new(backend: Arc<dyn Backend>, sandbox: String, exec: String) -> Self {
        ExecControl {
            backend,
            sandbox,
            exec,
        }
    }

    /// The exec's id.
    pub fn id(&self) -> &str {
        &self.exec
    }

    /// Where the exec is (running, exited, gone), its output range.
    pub async fn info(&self) -> Result<ExecInfo> {
        self.backend
            .exec_info(self.sandbox.clone(), self.exec.clone())
            .await
    }

    /// Sends `signal` (1..=64) to the program's process group.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.backend
            .signal(self.sandbox.clone(), self.exec.clone(), signal)
            .await
    }

    /// Writes `bytes` at `offset` of the program's stdin (for an exec
    /// started with stdin kept open). A retry of bytes already accepted
    /// writes nothing twice; an offset past what was accepted is refused.
    /// The answer's `accepted` is where the next write starts: less than
    /// `offset + len` when the program did not read in time.
    pub async fn write_stdin(&self, offset: u64, bytes: impl Into<Bytes>) -> Result<StdinWritten> {
        self.backend
            .write_stdin(
                self.sandbox.clone(),
                self.exec.clone(),
                Some(offset),
                bytes.into(),
                false,
            )
            .await
    }

    /// Writes `bytes` after everything accepted so far (not safe to retry:
    /// use [`ExecControl::write_stdin`] for that).
    pub async fn append_stdin(&self, bytes: impl Into<Bytes>) -> Result<StdinWritten> {
        self.backend
            .write_stdin(
                self.sandbox.clone(),
                self.exec.clone(),
                None,
                bytes.into(),
                false,
            )
            .await
    }

    /// Closes the program's stdin (it reads end of file); idempotent.
    pub async fn close_stdin(&self) -> Result<StdinWritten> {
        self.backend
            .write_stdin(
                self.sandbox.clone(),
                self.exec.clone(),
                None,
                Bytes::new(),
                true,
            )
            .await
    }
}
