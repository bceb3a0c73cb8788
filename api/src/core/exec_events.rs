//! An agent attach as a stream of exec events: output chunks with the
//! agent's sequence numbers, a gap for evicted output, then the exit
//! (recorded before it goes out) or, without follow, `caught_up`. With
//! kill-on-disconnect, dropping the stream before the end kills the
//! program's process group.

use futures_util::stream::{self, BoxStream, StreamExt};
use kiln_agent::async_client::AttachEvent;
use kiln_agent::protocol::OutputStream;

use super::files::vm_error;
use super::profile::Phases;
use super::Core;
use crate::agent_link::AttachEvents;
use crate::model::ExecEvent;
use crate::vm_process::AgentAddr;

/// Events of one exec, in order; the last is `exited`, `caught_up` or
/// `error`.
pub(crate) type ExecStream = BoxStream<'static, ExecEvent>;

/// SIGKILLs an agent process when dropped while armed.
pub(super) struct KillOnDrop {
    agent: AgentAddr,
    agent_id: u64,
    armed: bool,
}

impl KillOnDrop {
    pub(super) fn new(agent: AgentAddr, agent_id: u64) -> Self {
        KillOnDrop {
            agent,
            agent_id,
            armed: true,
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (agent, id) = (self.agent.clone(), self.agent_id);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tracing::info!(agent_id = id, "the exec's client left: killing it");
                    if let Err(e) = agent.signal(id, libc::SIGKILL).await {
                        tracing::info!(agent_id = id, error = %e, "kill on disconnect");
                    }
                });
            }
            Err(_) => tracing::warn!(
                agent_id = id,
                "exec dropped outside a runtime: it was not killed"
            ),
        }
    }
}

/// What one attach stream carries along.
struct Attach {
    core: Core,
    sandbox: String,
    exec: String,
    events: AttachEvents,
    last_seq: u64,
    done: bool,
    kill: Option<KillOnDrop>,
    /// A foreground exec's: its end logs the phases and ends its count.
    foreground: Option<Foreground>,
}

/// What a foreground exec's stream carries to the exec's end.
pub(super) struct Foreground {
    /// The exec's phases so far.
    pub phases: Phases,
    /// Counts the exec as foreground (pool refills wait for it) until
    /// dropped.
    pub _busy: super::foreground::Busy,
}

impl Attach {
    async fn next(&mut self) -> ExecEvent {
        let event = match self.events.next().await {
            Some(Ok(AttachEvent::Output(chunk))) => {
                if chunk.seq == 1 {
                    if let Some(f) = self.foreground.as_mut() {
                        f.phases.mark("first_output");
                    }
                }
                self.last_seq = chunk.seq;
                let stderr = chunk.stream == OutputStream::Stderr;
                return ExecEvent::output(stderr, chunk.seq, chunk.data);
            }
            Some(Ok(AttachEvent::Gap(gap))) => {
                self.last_seq = gap.last_seq;
                return ExecEvent::Gap {
                    seq: gap.last_seq,
                    first_seq: gap.first_seq,
                };
            }
            Some(Ok(AttachEvent::CaughtUp(seq))) => ExecEvent::CaughtUp { seq },
            Some(Ok(AttachEvent::Exited(status))) => {
                if let Some(kill) = self.kill.as_mut() {
                    kill.armed = false;
                }
                if let Some(f) = self.foreground.as_mut() {
                    f.phases.mark("exit");
                }
                // Recorded before the reader hears of the end, so a
                // replay or a listing right after it finds the result.
                let result = self
                    .core
                    .finish_exec(&self.sandbox, &self.exec, Some(&status))
                    .unwrap_or_else(|| super::exec_watch::result_of(&self.exec, &status));
                if let Some(Foreground { mut phases, .. }) = self.foreground.take() {
                    phases.mark("exit_recorded");
                    phases.log();
                    tracing::debug!(
                        exec_id = %self.exec,
                        program_ms = status.duration_ms,
                        "the agent's time from spawn to exit"
                    );
                }
                ExecEvent::Exited {
                    seq: self.last_seq,
                    result,
                }
            }
            Some(Err(e)) => {
                let error = vm_error(e.into());
                tracing::info!(exec_id = %self.exec, error = %error, "exec stream failed");
                ExecEvent::Error {
                    seq: self.last_seq,
                    error: error.to_body().error,
                }
            }
            None => ExecEvent::Error {
                seq: self.last_seq,
                error: crate::Error::Guest("the agent ended the output stream early".into())
                    .to_body()
                    .error,
            },
        };
        self.done = true;
        self.foreground = None;
        event
    }
}

/// The exec events of an attach to `exec` of `sandbox` that asked for the
/// chunks after `after_seq`.
pub(super) fn exec_events(
    core: Core,
    sandbox: &str,
    exec: &str,
    events: AttachEvents,
    after_seq: u64,
    kill: Option<KillOnDrop>,
    foreground: Option<Foreground>,
) -> ExecStream {
    let attach = Attach {
        core,
        sandbox: sandbox.to_string(),
        exec: exec.to_string(),
        events,
        last_seq: after_seq,
        done: false,
        kill,
        foreground,
    };
    stream::unfold(attach, |mut a| async move {
        if a.done {
            return None;
        }
        let event = a.next().await;
        Some((event, a))
    })
    .boxed()
}
