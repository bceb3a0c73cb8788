//! Starting execs. Every exec is a process in the sandbox agent's process
//! table: `Start` returns its id at once and the program runs on whatever
//! happens to the client. A foreground exec is start + attach from the
//! first chunk (+ the exit, which ends the attach); with
//! `kill_on_disconnect` a client that leaves early takes the program with
//! it. The exec id and the agent's id are kept in SQLite, so a restarted
//! daemon finds its execs again.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use kiln_agent::protocol::{ErrorCode, ExecRequest};
use tracing::Instrument;

use super::exec_events::{exec_events, ExecStream, Foreground, KillOnDrop};
use super::files::vm_error;
use super::profile::Phases;
use super::sandboxes::{body_hash, check_env, check_path};
use super::store::{ExecRecord, Reservation};
use super::{new_id, Core};
use crate::agent_link::attach_on;
use crate::auth::Actor;
use crate::config::TimeoutsConfig;
use crate::model::{now_ms, AuditKind, AuditResult, AuditWhat, ExecEvent, ExecSpec};
use crate::vm_process::{AgentAddr, EXEC_TIMEOUT_GRACE};
use crate::{Error, Result};

/// Most stdin bytes an exec request may carry.
pub(crate) const MAX_STDIN_BYTES: usize = 8 << 20;

fn stdin_of(spec: &ExecSpec) -> Result<Option<Vec<u8>>> {
    let bytes = match (&spec.stdin, &spec.stdin_b64) {
        (None, None) => return Ok(None),
        (Some(s), None) => s.clone().into_bytes(),
        (None, Some(b)) => crate::b64::decode(b)?,
        (Some(_), Some(_)) => return Err(Error::invalid("give stdin or stdin_b64, not both")),
    };
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(Error::TooLarge(format!(
            "stdin has {} bytes; at most {MAX_STDIN_BYTES}",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// Checks an exec's spec; returns its timeout (ms) and initial stdin.
pub(crate) fn check_exec(
    spec: &ExecSpec,
    timeouts: &TimeoutsConfig,
) -> Result<(u64, Option<Vec<u8>>)> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(Error::invalid("argv must name a program"));
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid("argv may not contain NUL"));
    }
    let timeout_ms = timeouts.exec().check("timeout_ms", spec.timeout_ms)?;
    check_env(&spec.env)?;
    if let Some(cwd) = &spec.cwd {
        check_path(cwd)?;
    }
    Ok((timeout_ms, stdin_of(spec)?))
}

/// A stream that replays a finished exec whose output the agent no longer
/// holds: its start and its end.
fn replay(record: &ExecRecord) -> Result<ExecStream> {
    let Some(result) = record.result.clone() else {
        return Err(Error::Conflict(format!(
            "exec {} with this Idempotency-Key is gone from the agent; its output cannot be replayed",
            record.id
        )));
    };
    let events = [
        ExecEvent::Started {
            seq: 0,
            exec_id: record.id.clone(),
        },
        ExecEvent::Exited { seq: 0, result },
    ];
    Ok(stream::iter(events).boxed())
}

/// How long an attach may wait for the next event: a following attach as
/// long as the program may live (plus the grace), `None` when unknown.
pub(super) fn follow_idle(record: &ExecRecord) -> Option<std::time::Duration> {
    record.timeout_ms.map(exec_idle)
}

/// How long an attach to a program with timeout `timeout_ms` may wait for
/// its next event.
fn exec_idle(timeout_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(timeout_ms).saturating_add(EXEC_TIMEOUT_GRACE)
}

/// Feeds an exec's initial stdin as the program reads it (the agent waits
/// a few seconds per write; a write that made no progress is retried
/// while the program runs, and its timeout bounds that), then closes
/// stdin unless it is to stay open. Holds the exec's stdin lock throughout.
async fn feed_stdin(
    agent: AgentAddr,
    agent_id: u64,
    bytes: Vec<u8>,
    keep_open: bool,
    lock: tokio::sync::OwnedMutexGuard<()>,
) {
    let end = bytes.len() as u64;
    let mut at = 0u64;
    while at < end {
        let from = usize::try_from(at).unwrap_or(usize::MAX);
        match agent
            .write_stdin(agent_id, at, bytes.get(from..).unwrap_or_default())
            .await
        {
            Ok(accepted) => at = accepted,
            Err(e) => {
                // Closed by the program, or it ended: the rest is moot.
                tracing::debug!(error = %e, "initial stdin stopped");
                break;
            }
        }
    }
    if !keep_open {
        if let Err(e) = agent.close_stdin(agent_id).await {
            if e.agent_code() != Some(ErrorCode::NoSuchProcess) {
                tracing::debug!(error = %e, "closing stdin");
            }
        }
    }
    drop(lock);
}

impl Core {
    /// Starts an exec in sandbox `id`; returns its record and whether it
    /// is an idempotent replay of an earlier one (then nothing ran).
    pub async fn start_exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        key: Option<String>,
        caller: &Actor,
    ) -> Result<(ExecRecord, bool)> {
        let mut phases = Phases::start("exec start");
        let started = self
            .start_exec_timed(id, spec, key, caller, &mut phases)
            .await;
        phases.log();
        started
    }

    /// [`Core::start_exec`], its phases recorded in `phases`.
    async fn start_exec_timed(
        &self,
        id: &str,
        spec: &ExecSpec,
        key: Option<String>,
        caller: &Actor,
        phases: &mut Phases,
    ) -> Result<(ExecRecord, bool)> {
        self.refuse_if_draining()?;
        let (timeout_ms, stdin) = check_exec(spec, &self.config().timeouts)?;
        let scope = format!("exec:{id}");
        if let Some(key) = &key {
            match self
                .inner
                .store
                .reserve(&scope, key, &body_hash(spec), now_ms())?
            {
                Reservation::New => {}
                Reservation::Replay(prior) => {
                    let record = self
                        .inner
                        .store
                        .exec(&prior)?
                        .ok_or_else(|| Error::NotFound(format!("exec {prior}")))?;
                    return Ok((record, true));
                }
                Reservation::InFlight => {
                    return Err(Error::Conflict(format!(
                        "an exec with Idempotency-Key {key:?} is starting"
                    )))
                }
                Reservation::Mismatch => {
                    return Err(Error::Conflict(format!(
                        "Idempotency-Key {key:?} was used with another request body"
                    )))
                }
            }
        }
        phases.mark("checks");
        let started = self
            .launch(id, spec, stdin, timeout_ms, caller, phases)
            .await;
        self.audit(
            caller,
            AuditKind::Exec,
            Some(id),
            AuditWhat {
                exec_id: started.as_ref().ok().map(|r| r.id.clone()),
                argv: Some(spec.argv.clone()),
                ..AuditWhat::default()
            },
            AuditResult::of(&started),
        );
        phases.mark("audit");
        if let Some(key) = &key {
            let kept = match &started {
                Ok(record) => self.inner.store.complete(&scope, key, &record.id),
                Err(_) => self.inner.store.release(&scope, key),
            };
            if let Err(e) = kept {
                tracing::warn!(error = %e, "idempotency key not updated");
            }
        }
        Ok((started?, false))
    }

    /// Starts the program in the agent and records it.
    async fn launch(
        &self,
        id: &str,
        spec: &ExecSpec,
        stdin: Option<Vec<u8>>,
        timeout_ms: u64,
        caller: &Actor,
        phases: &mut Phases,
    ) -> Result<ExecRecord> {
        let (vm, info) = self.touch(id)?;
        let mut env: BTreeMap<String, String> = info.env.clone();
        env.extend(spec.env.clone());
        let request = ExecRequest {
            argv: spec.argv.clone(),
            env: env.into_iter().collect(),
            cwd: spec.cwd.clone().or(info.cwd.clone()),
            stdin: stdin.is_some() || spec.stdin_open,
            timeout_ms: Some(timeout_ms),
            max_output_bytes: None,
        };
        let agent = vm.process.agent().clone();
        phases.mark("touch");
        let agent_id = agent.start(request).await.map_err(|e| vm_error(e.into()))?;
        phases.mark("agent_start");
        let record = ExecRecord {
            id: new_id("exec"),
            sandbox_id: id.to_string(),
            argv: spec.argv.clone(),
            started_at_ms: now_ms(),
            result: None,
            agent_id: Some(agent_id),
            timeout_ms: Some(timeout_ms),
            gone: false,
            uid: caller.uid(),
            subject: caller.subject().map(str::to_string),
        };
        if let Err(e) = self.inner.store.put_exec(&record) {
            // Unrecorded, nobody could find it again: it must not run.
            let _ = agent.signal(agent_id, libc::SIGKILL).await;
            return Err(e.into());
        }
        phases.mark("exec_row");
        let lock = self.track_exec(id, &record.id, agent_id);
        phases.mark("track");
        if let Some(bytes) = stdin {
            let guard = Arc::clone(&lock).lock_owned().await;
            let span = tracing::info_span!("stdin", sandbox_id = %id, exec_id = %record.id);
            tokio::spawn(
                feed_stdin(agent, agent_id, bytes, spec.stdin_open, guard).instrument(span),
            );
        }
        tracing::info!(sandbox_id = %id, exec_id = %record.id, agent_id, "exec started");
        Ok(record)
    }

    /// Where and with which idle bound a foreground exec's attach will
    /// connect, when the sandbox lives and the spec's timeout is valid
    /// (else the start fails and no connection is needed).
    fn attach_ahead(&self, id: &str, spec: &ExecSpec) -> Option<(AgentAddr, std::time::Duration)> {
        let timeout_ms = self
            .config()
            .timeouts
            .exec()
            .check("timeout_ms", spec.timeout_ms)
            .ok()?;
        let st = self.state();
        let agent = st.sandboxes.get(id)?.vm.process.agent().clone();
        Some((agent, exec_idle(timeout_ms)))
    }

    /// Starts an exec and streams its events from `started` to `exited`.
    /// The program runs on if the stream is dropped, unless the spec asks
    /// for `kill_on_disconnect`.
    pub async fn exec(
        &self,
        id: &str,
        spec: ExecSpec,
        key: Option<String>,
        caller: &Actor,
    ) -> Result<ExecStream> {
        let mut phases = Phases::start("exec");
        let busy = self.inner.foreground.begin();
        // The attach's connection opens while `Start` is on its way (one
        // connection round trip less); a failed start drops it at once.
        let ahead = self.attach_ahead(id, &spec);
        let connect = async {
            match &ahead {
                Some((agent, idle)) => Some(agent.connect(Some(*idle)).await),
                None => None,
            }
        };
        tokio::pin!(connect);
        let (started, connected) = {
            let start = self.start_exec_timed(id, &spec, key, caller, &mut phases);
            tokio::pin!(start);
            let mut connected = None;
            let started = loop {
                tokio::select! {
                    started = &mut start => break started,
                    c = &mut connect, if connected.is_none() => connected = Some(c),
                }
            };
            (started, connected)
        };
        let (record, replayed) = started?;
        let conn = match connected {
            Some(c) => c,
            None => connect.await,
        };
        let started = ExecEvent::Started {
            seq: 0,
            exec_id: record.id.clone(),
        };
        let Some(agent_id) = record.agent_id else {
            return replay(&record);
        };
        let (vm, _) = self.touch(id)?;
        let agent = vm.process.agent().clone();
        let idle = follow_idle(&record);
        let attached = match conn {
            // Opened with the idle bound of this very exec.
            Some(Ok(conn))
                if !replayed && ahead.as_ref().is_some_and(|(_, i)| Some(*i) == idle) =>
            {
                Ok(attach_on(conn, agent_id, 0, true, idle))
            }
            _ => agent
                .attach(agent_id, 0, true, idle)
                .await
                .map_err(|e| vm_error(e.into())),
        };
        let mut events = match attached {
            Ok(events) => events,
            Err(_) if replayed => return replay(&record),
            Err(e) => return Err(e),
        };
        phases.mark("attach");
        if replayed {
            // The agent may have forgotten it: its refusal comes first.
            match events.next().await {
                Some(Ok(first)) => events = stream::once(async { Ok(first) }).chain(events).boxed(),
                _ => return replay(&record),
            }
        }
        let kill = (spec.kill_on_disconnect && !replayed).then(|| KillOnDrop::new(agent, agent_id));
        let events = exec_events(
            self.clone(),
            id,
            &record.id,
            events,
            0,
            kill,
            Some(Foreground {
                phases,
                _busy: busy,
            }),
        );
        Ok(stream::once(async { started }).chain(events).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_text_or_base64_and_bounded() {
        let spec = |stdin: Option<&str>, b64: Option<&str>| ExecSpec {
            argv: vec!["cat".into()],
            stdin: stdin.map(str::to_string),
            stdin_b64: b64.map(str::to_string),
            ..ExecSpec::default()
        };
        assert_eq!(stdin_of(&spec(None, None)).expect("none"), None);
        assert_eq!(
            stdin_of(&spec(Some("hi"), None)).expect("text"),
            Some(b"hi".to_vec())
        );
        assert_eq!(
            stdin_of(&spec(None, Some("AP8="))).expect("b64"),
            Some(vec![0, 255])
        );
        assert!(stdin_of(&spec(Some("a"), Some("AA=="))).is_err());
        let big = "a".repeat(MAX_STDIN_BYTES + 1);
        assert!(matches!(
            stdin_of(&spec(Some(&big), None)),
            Err(Error::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn a_forgotten_exec_replays_its_result_or_conflicts() {
        let mut record = ExecRecord {
            id: "exec-1".into(),
            sandbox_id: "sbx-1".into(),
            argv: vec!["true".into()],
            started_at_ms: 1,
            ..ExecRecord::default()
        };
        assert!(matches!(replay(&record), Err(Error::Conflict(_))));
        record.result = Some(crate::model::ExecResult {
            exec_id: "exec-1".into(),
            exit_code: Some(0),
            ..Default::default()
        });
        let events: Vec<ExecEvent> = replay(&record).expect("replay").collect().await;
        assert!(matches!(&events[0], ExecEvent::Started { exec_id, .. } if exec_id == "exec-1"));
        assert!(matches!(
            &events[1],
            ExecEvent::Exited { result, .. } if result.exit_code == Some(0)
        ));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_following_attach_waits_as_long_as_the_program_may_live() {
        let record = ExecRecord {
            timeout_ms: Some(1000),
            ..ExecRecord::default()
        };
        assert_eq!(
            follow_idle(&record),
            Some(std::time::Duration::from_secs(1) + EXEC_TIMEOUT_GRACE)
        );
        assert_eq!(follow_idle(&ExecRecord::default()), None);
    }
}
