//! Which execs of a sandbox still run. The programs live in the agent's
//! process table, not in any connection, so the daemon watches them: one
//! task per sandbox with running execs lists the agent's processes every
//! [`WATCH_INTERVAL`] and records each end it sees (in SQLite, for
//! listings, replays and restarts). A foreground exec's stream records its
//! end at once. While any exec runs the sandbox is not idle. After a
//! daemon restart the unfinished execs of each re-adopted sandbox are
//! watched again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_agent::protocol::ExitStatus;

use super::store::ExecRecord;
use super::Core;
use crate::auth::Actor;
use crate::model::{now_ms, AuditKind, AuditOutcome, AuditResult, AuditWhat, ExecResult};

/// How often a sandbox's running execs are checked.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A running exec.
pub(super) struct RunningExec {
    /// The agent's id of the process.
    pub agent_id: u64,
    /// Held while stdin is written, so an append (at the agent's count)
    /// and the initial stdin never interleave.
    pub stdin: Arc<tokio::sync::Mutex<()>>,
}

/// The running execs of a sandbox.
#[derive(Default)]
pub(super) struct RunningExecs {
    /// Exec id -> the running exec.
    pub running: HashMap<String, RunningExec>,
    /// Whether the watcher task runs.
    watched: bool,
}

/// The API result of an agent exit.
pub(super) fn result_of(exec_id: &str, status: &ExitStatus) -> ExecResult {
    ExecResult {
        exec_id: exec_id.to_string(),
        exit_code: status.code,
        signal: status.signal,
        timed_out: status.timed_out,
        oom_killed: status.oom_killed,
        truncated: status.truncated,
        duration_ms: status.duration_ms,
        stdout: None,
        stderr: None,
    }
}

impl Core {
    /// Counts exec `exec` (agent process `agent_id`) as running in
    /// `sandbox` and makes sure the sandbox's watcher runs; returns the
    /// exec's stdin lock.
    pub(super) fn track_exec(
        &self,
        sandbox: &str,
        exec: &str,
        agent_id: u64,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let stdin = Arc::new(tokio::sync::Mutex::new(()));
        let start_watcher = {
            let mut st = self.state();
            let Some(s) = st.sandboxes.get_mut(sandbox) else {
                return stdin;
            };
            s.execs.running.insert(
                exec.to_string(),
                RunningExec {
                    agent_id,
                    stdin: Arc::clone(&stdin),
                },
            );
            s.info.running_execs = u32::try_from(s.execs.running.len()).unwrap_or(u32::MAX);
            s.info.last_activity_ms = now_ms();
            s.info.expires_at_ms = Some(super::sandboxes::clock_of(&s.info).deadline().at_ms);
            s.notice_sent_for = None;
            !std::mem::replace(&mut s.execs.watched, true)
        };
        self.inner.expiry.notify_one();
        if start_watcher {
            let core = self.clone();
            let sandbox = sandbox.to_string();
            let stop = self.inner.stop.clone();
            self.inner.tasks.spawn(async move {
                tokio::select! {
                    () = core.watch_execs(&sandbox) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        stdin
    }

    /// The stdin lock of a running exec (a fresh one for an exec that is
    /// not running: the agent refuses its stdin anyway).
    pub(super) fn stdin_lock(&self, sandbox: &str, exec: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.state()
            .sandboxes
            .get(sandbox)
            .and_then(|s| s.execs.running.get(exec))
            .map_or_else(Default::default, |r| Arc::clone(&r.stdin))
    }

    /// Lists the agent's processes until none of the sandbox's execs runs
    /// (or the sandbox ends). The first look is one interval after the
    /// start: a foreground exec records its own end, and a listing at once
    /// would only compete with the program it just started.
    async fn watch_execs(&self, sandbox: &str) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let (vm, running) = {
                let mut st = self.state();
                let Some(s) = st.sandboxes.get_mut(sandbox) else {
                    return;
                };
                if s.execs.running.is_empty() {
                    s.execs.watched = false;
                    return;
                }
                let running: Vec<(String, u64)> = s
                    .execs
                    .running
                    .iter()
                    .map(|(id, r)| (id.clone(), r.agent_id))
                    .collect();
                (Arc::clone(&s.vm), running)
            };
            // A failing agent is left to the VM's own watcher (a dead VM
            // ends the sandbox); the next round tries again.
            match vm.process.agent().processes().await {
                Ok(listed) => {
                    for (exec, agent_id) in running {
                        match listed.iter().find(|p| p.id == agent_id) {
                            Some(p) => {
                                if let Some(exit) = &p.exit {
                                    self.finish_exec(sandbox, &exec, Some(exit));
                                }
                            }
                            None => {
                                self.finish_exec(sandbox, &exec, None);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(sandbox_id = %sandbox, error = %e, "listing processes"),
            }
        }
    }

    /// Records the end of exec `exec`: how it ended (`exit`), or that the
    /// agent no longer knows it (`None`). Idempotent; returns the result.
    pub(super) fn finish_exec(
        &self,
        sandbox: &str,
        exec: &str,
        exit: Option<&ExitStatus>,
    ) -> Option<ExecResult> {
        let was_running = {
            let mut st = self.state();
            st.sandboxes.get_mut(sandbox).is_some_and(|s| {
                let removed = s.execs.running.remove(exec).is_some();
                if removed {
                    s.info.running_execs = u32::try_from(s.execs.running.len()).unwrap_or(u32::MAX);
                    s.info.last_activity_ms = now_ms();
                    s.info.expires_at_ms =
                        Some(super::sandboxes::clock_of(&s.info).deadline().at_ms);
                }
                removed
            })
        };
        if was_running {
            self.inner.expiry.notify_one();
            if let Some(status) = exit {
                self.inner
                    .metrics
                    .exec_duration
                    .observe(Duration::from_millis(status.duration_ms).as_secs_f64());
            }
        }
        let result = exit.map(|status| result_of(exec, status));
        match self.inner.store.settle_exec(exec, result.clone()) {
            Ok(Some((record, true))) => {
                self.audit_exec_end(&record);
                record.result
            }
            Ok(Some((record, false))) => record.result,
            Ok(None) => result,
            Err(e) => {
                tracing::warn!(exec_id = %exec, error = %e, "exec end not recorded");
                result
            }
        }
    }

    /// The audit record of an exec's end, in the name of who started it.
    fn audit_exec_end(&self, record: &ExecRecord) {
        let actor = match &record.subject {
            Some(subject) => Actor::Token {
                subject: subject.clone(),
            },
            None => Actor::Uid(record.uid),
        };
        let result = match &record.result {
            Some(r) => AuditResult {
                reason: (if r.timed_out {
                    Some("timed_out")
                } else if r.oom_killed {
                    Some("oom_killed")
                } else {
                    None
                })
                .map(str::to_string),
                exit_code: r.exit_code,
                exit_signal: r.signal,
                duration_ms: Some(r.duration_ms),
                ..AuditResult::ok()
            },
            None => AuditResult {
                outcome: AuditOutcome::Error,
                reason: Some(
                    "gone: the agent or the sandbox ended before its exit was seen".into(),
                ),
                ..AuditResult::default()
            },
        };
        self.audit(
            &actor,
            AuditKind::ExecEnd,
            Some(&record.sandbox_id),
            AuditWhat {
                exec_id: Some(record.id.clone()),
                ..AuditWhat::default()
            },
            result,
        );
    }

    /// After a restart: watches the unfinished execs of every re-adopted
    /// sandbox again.
    pub(super) fn recover_execs(&self) -> crate::Result<()> {
        let sandboxes: Vec<String> = self.state().sandboxes.keys().cloned().collect();
        for sandbox in sandboxes {
            for record in self.inner.store.unfinished_execs(&sandbox)? {
                if let Some(agent_id) = record.agent_id {
                    self.track_exec(&sandbox, &record.id, agent_id);
                }
            }
        }
        Ok(())
    }
}
