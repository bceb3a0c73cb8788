//! Execs: a program in a sandbox, streamed as events (started, stdout,
//! stderr, exited). While it runs the sandbox is not idle. The exec lives
//! in the agent connection: dropping the stream aborts it (the agent kills
//! the program when the host hangs up).

use std::collections::BTreeMap;
use std::time::Instant;

use kiln_agent::protocol::ExecRequest;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::sandboxes::{body_hash, check_env, check_path, clock_of};
use super::store::{ExecRecord, Reservation};
use super::{new_id, Core};
use crate::model::{now_ms, ExecEvent, ExecResult, ExecSpec};
use crate::vm_process::ExecOutput;
use crate::{Error, Result};

/// Events of one exec, in order; the last is `exited` or `error`.
pub(crate) type ExecStream = mpsc::Receiver<ExecEvent>;

/// Most stdin bytes an exec request may carry.
pub(crate) const MAX_STDIN_BYTES: usize = 8 << 20;

/// Events buffered between the agent and a slow reader (each at most one
/// agent frame, 64 KiB).
const EVENT_BUFFER: usize = 16;

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

/// A stream that replays a finished exec.
fn replay(record: ExecRecord) -> Result<ExecStream> {
    let Some(result) = record.result else {
        return Err(Error::Conflict(format!(
            "exec {} with this Idempotency-Key is still running; its output cannot be replayed",
            record.id
        )));
    };
    let (tx, rx) = mpsc::channel(2);
    let _ = tx.try_send(ExecEvent::Started {
        seq: 0,
        exec_id: record.id,
    });
    let _ = tx.try_send(ExecEvent::Exited { seq: 1, result });
    Ok(rx)
}

impl Core {
    /// Starts an exec in sandbox `id`.
    pub async fn exec(
        &self,
        id: &str,
        spec: ExecSpec,
        key: Option<String>,
        caller: Option<u32>,
    ) -> Result<ExecStream> {
        self.refuse_if_draining()?;
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(Error::invalid("argv must name a program"));
        }
        let timeout_ms = self
            .config()
            .timeouts
            .exec()
            .check("timeout_ms", spec.timeout_ms)?;
        check_env(&spec.env)?;
        if let Some(cwd) = &spec.cwd {
            check_path(cwd)?;
        }
        let stdin = stdin_of(&spec)?;
        let scope = format!("exec:{id}");
        let exec_id = new_id("exec");
        if let Some(key) = &key {
            match self
                .inner
                .store
                .reserve(&scope, key, &body_hash(&spec), now_ms())?
            {
                Reservation::New => self.inner.store.complete(&scope, key, &exec_id)?,
                Reservation::Replay(prior) => {
                    let record = self
                        .inner
                        .store
                        .exec(&prior)?
                        .ok_or_else(|| Error::NotFound(format!("exec {prior}")))?;
                    return replay(record);
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
        let (vm, info) = self.touch(id)?;
        let mut env: BTreeMap<String, String> = info.env.clone();
        env.extend(spec.env.clone());
        let request = ExecRequest {
            argv: spec.argv.clone(),
            env: env.into_iter().collect(),
            cwd: spec.cwd.clone().or(info.cwd.clone()),
            stdin: stdin.is_some(),
            timeout_ms: Some(timeout_ms),
            max_output_bytes: None,
        };
        let record = ExecRecord {
            id: exec_id.clone(),
            sandbox_id: id.to_string(),
            argv: spec.argv.clone(),
            started_at_ms: now_ms(),
            result: None,
        };
        self.inner.store.put_exec(&record)?;
        self.inner
            .store
            .audit(caller, "exec", id, &spec.argv.join(" "));
        self.running(id, 1);
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let core = self.clone();
        let span = tracing::info_span!("exec", sandbox_id = %id, exec_id = %exec_id);
        let sandbox_id = id.to_string();
        tokio::spawn(
            async move {
                let stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> =
                    stdin.map(|b| Box::new(std::io::Cursor::new(b)) as _);
                let last = core.pump(&vm, request, stdin, &exec_id, &tx).await;
                core.running(&sandbox_id, -1);
                let Some((result, last)) = last else {
                    return; // the reader left: nothing to tell
                };
                // Recorded before the reader hears of the end, so a replay
                // right after it finds the result.
                let mut record = record;
                record.result = result;
                if let Err(e) = core.inner.store.put_exec(&record) {
                    tracing::warn!(error = %e, "exec result not recorded");
                }
                let _ = tx.send(last).await;
            }
            .instrument(span),
        );
        Ok(rx)
    }

    /// Adds `delta` to the sandbox's running execs (and counts activity).
    fn running(&self, id: &str, delta: i32) {
        let mut st = self.state();
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.info.running_execs = s.info.running_execs.saturating_add_signed(delta);
            s.info.last_activity_ms = now_ms();
            s.info.expires_at_ms = Some(clock_of(&s.info).deadline().at_ms);
            s.notice_sent_for = None;
        }
        drop(st);
        self.inner.expiry.notify_one();
    }

    /// Runs the exec, forwarding output as events; returns the result (when
    /// the program ended) and the last event, not yet sent; `None` when the
    /// reader left.
    async fn pump(
        &self,
        vm: &super::vms::Vm,
        request: ExecRequest,
        stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
        exec_id: &str,
        tx: &mpsc::Sender<ExecEvent>,
    ) -> Option<(Option<ExecResult>, ExecEvent)> {
        let started = Instant::now();
        let mut seq = 0u64;
        let started_event = ExecEvent::Started {
            seq,
            exec_id: exec_id.to_string(),
        };
        if tx.send(started_event).await.is_err() {
            return None;
        }
        let (out_tx, mut out_rx) = mpsc::channel(EVENT_BUFFER);
        let exec = vm.process.exec(request, stdin, out_tx);
        tokio::pin!(exec);
        let outcome = loop {
            tokio::select! {
                chunk = out_rx.recv() => {
                    let Some(chunk) = chunk else { continue };
                    seq += 1;
                    let event = match chunk {
                        ExecOutput::Stdout(b) => ExecEvent::output(false, seq, b),
                        ExecOutput::Stderr(b) => ExecEvent::output(true, seq, b),
                    };
                    if tx.send(event).await.is_err() {
                        tracing::info!("exec reader left; aborting the exec");
                        return None;
                    }
                }
                outcome = &mut exec => break outcome,
            }
        };
        // Output that arrived before the exit frame.
        while let Ok(chunk) = out_rx.try_recv() {
            seq += 1;
            let event = match chunk {
                ExecOutput::Stdout(b) => ExecEvent::output(false, seq, b),
                ExecOutput::Stderr(b) => ExecEvent::output(true, seq, b),
            };
            if tx.send(event).await.is_err() {
                return None;
            }
        }
        seq += 1;
        match outcome {
            Ok(status) => {
                self.inner
                    .metrics
                    .exec_duration
                    .observe(started.elapsed().as_secs_f64());
                let result = ExecResult {
                    exec_id: exec_id.to_string(),
                    exit_code: status.code,
                    signal: status.signal,
                    timed_out: status.timed_out,
                    oom_killed: status.oom_killed,
                    truncated: status.truncated,
                    duration_ms: status.duration_ms,
                    stdout: None,
                    stderr: None,
                };
                let last = ExecEvent::Exited {
                    seq,
                    result: result.clone(),
                };
                Some((Some(result), last))
            }
            Err(e) => {
                let error = super::files::vm_error(e);
                tracing::info!(error = %error, "exec failed");
                let last = ExecEvent::Error {
                    seq,
                    error: error.to_body().error,
                };
                Some((None, last))
            }
        }
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

    #[test]
    fn a_finished_exec_replays_and_a_running_one_conflicts() {
        let mut record = ExecRecord {
            id: "exec-1".into(),
            sandbox_id: "sbx-1".into(),
            argv: vec!["true".into()],
            started_at_ms: 1,
            result: None,
        };
        assert!(matches!(replay(record.clone()), Err(Error::Conflict(_))));
        record.result = Some(ExecResult {
            exec_id: "exec-1".into(),
            exit_code: Some(0),
            ..ExecResult::default()
        });
        let mut rx = replay(record).expect("replay");
        assert!(matches!(rx.try_recv(), Ok(ExecEvent::Started { .. })));
        assert!(matches!(
            rx.try_recv(),
            Ok(ExecEvent::Exited { result, .. }) if result.exit_code == Some(0)
        ));
    }
}
