//! An exec after its start: list a sandbox's execs, attach to one's
//! output from a sequence number, write its stdin at an offset, signal its
//! process group. The agent holds the processes; the daemon maps its exec
//! ids to them (SQLite) and proxies.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use kiln_agent::protocol::{ErrorCode, ProcessInfo};

use super::exec::follow_idle;
use super::exec_events::{exec_events, ExecStream};
use super::exec_watch::result_of;
use super::files::vm_error;
use super::store::ExecRecord;
use super::vms::Vm;
use super::Core;
use crate::auth::Actor;
use crate::model::{AuditKind, AuditResult, AuditWhat, ExecInfo, ExecState, StdinWritten};
use crate::vm_process::{AgentError, REQUEST_TIMEOUT};
use crate::{Error, Result};

/// Most execs a listing shows (the newest).
pub(crate) const MAX_LISTED_EXECS: u32 = 256;
/// Most bytes one stdin write may carry.
pub(crate) const MAX_STDIN_WRITE: usize = 8 << 20;
/// How long a stdin write waits for an earlier one (the initial stdin of
/// a program that reads slowly, say) to finish.
const STDIN_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The listing entry of `record`, with the agent's view when it still
/// holds the process.
fn info_of(record: ExecRecord, process: Option<&ProcessInfo>) -> ExecInfo {
    let (state, result, stdin_open, first_seq, last_seq) = match process {
        Some(p) => match &p.exit {
            None => (
                ExecState::Running,
                None,
                p.stdin_open,
                p.first_seq,
                p.last_seq,
            ),
            Some(exit) => (
                ExecState::Exited,
                Some(result_of(&record.id, exit)),
                false,
                p.first_seq,
                p.last_seq,
            ),
        },
        None => (ExecState::Gone, record.result.clone(), false, 0, 0),
    };
    ExecInfo {
        exec_id: record.id,
        sandbox_id: record.sandbox_id,
        argv: record.argv,
        started_at_ms: record.started_at_ms,
        state,
        stdin_open,
        first_seq,
        last_seq,
        result,
    }
}

/// The agent's id of an exec's process.
fn agent_id_of(record: &ExecRecord) -> Result<u64> {
    record.agent_id.ok_or_else(|| {
        Error::NotFound(format!(
            "exec {} ran before execs were kept as processes; its output is gone",
            record.id
        ))
    })
}

/// The API error for a failed process request on `record`.
fn process_error(record: &ExecRecord, e: AgentError) -> Error {
    if e.agent_code() == Some(ErrorCode::NoSuchProcess) {
        return Error::NotFound(format!(
            "exec {}: the agent no longer holds it (it forgets the oldest finished processes)",
            record.id
        ));
    }
    vm_error(e.into())
}

/// Every process the VM's agent holds.
async fn processes_of(vm: &Vm) -> Result<Vec<ProcessInfo>> {
    vm.process
        .agent()
        .processes()
        .await
        .map_err(|e| vm_error(e.into()))
}

impl Core {
    /// Exec `exec` of live sandbox `sandbox`, and the sandbox's VM.
    fn exec_of(&self, sandbox: &str, exec: &str) -> Result<(Arc<Vm>, ExecRecord)> {
        let (vm, _) = self.touch(sandbox)?;
        let record = self
            .inner
            .store
            .exec(exec)?
            .filter(|r| r.sandbox_id == sandbox)
            .ok_or_else(|| Error::NotFound(format!("exec {exec} in sandbox {sandbox}")))?;
        Ok((vm, record))
    }

    /// `GET /v1/sandboxes/{id}/execs`: the newest execs, newest first.
    pub async fn list_execs(&self, sandbox: &str) -> Result<Vec<ExecInfo>> {
        let (vm, _) = self.touch(sandbox)?;
        let records = self.inner.store.execs_of(sandbox, MAX_LISTED_EXECS)?;
        let processes = processes_of(&vm).await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let p = r
                    .agent_id
                    .and_then(|id| processes.iter().find(|p| p.id == id));
                info_of(r, p)
            })
            .collect())
    }

    /// `GET /v1/sandboxes/{id}/execs/{exec}`.
    pub async fn exec_info(&self, sandbox: &str, exec: &str) -> Result<ExecInfo> {
        let (vm, record) = self.exec_of(sandbox, exec)?;
        let processes = processes_of(&vm).await?;
        let p = record
            .agent_id
            .and_then(|id| processes.iter().find(|p| p.id == id));
        Ok(info_of(record, p))
    }

    /// `GET .../execs/{exec}/output`: the chunks after `after_seq` (a gap
    /// first for evicted ones), then the exit or, without `follow`,
    /// `caught_up` while it runs. Leaving ends only the attach.
    pub async fn attach(
        &self,
        sandbox: &str,
        exec: &str,
        after_seq: u64,
        follow: bool,
    ) -> Result<ExecStream> {
        let (vm, record) = self.exec_of(sandbox, exec)?;
        let agent_id = agent_id_of(&record)?;
        let idle = if follow {
            follow_idle(&record)
        } else {
            Some(REQUEST_TIMEOUT)
        };
        let mut events = vm
            .process
            .agent()
            .attach(agent_id, after_seq, follow, idle)
            .await
            .map_err(|e| vm_error(e.into()))?;
        // The agent's refusal (a forgotten process) is an answer, not a
        // stream.
        let first = match events.next().await {
            Some(Ok(first)) => first,
            Some(Err(e)) => return Err(process_error(&record, e)),
            None => return Err(Error::Guest("the agent closed the attach".into())),
        };
        let events = stream::once(async { Ok(first) }).chain(events).boxed();
        Ok(exec_events(
            self.clone(),
            sandbox,
            exec,
            events,
            after_seq,
            None,
            None,
        ))
    }

    /// `POST .../execs/{exec}/stdin`: writes `data` at stdin offset
    /// `offset` (a retry of bytes already accepted is not written again),
    /// or after what was accepted so far when `offset` is `None`; then
    /// closes stdin when `close` and everything was accepted.
    pub async fn write_stdin(
        &self,
        sandbox: &str,
        exec: &str,
        offset: Option<u64>,
        data: &[u8],
        close: bool,
        caller: &Actor,
    ) -> Result<StdinWritten> {
        // The write and the offset it went at, audited either way.
        let written: Result<(StdinWritten, u64)> = async {
            if data.len() > MAX_STDIN_WRITE {
                return Err(Error::TooLarge(format!(
                    "a stdin write has at most {MAX_STDIN_WRITE} bytes"
                )));
            }
            let (vm, record) = self.exec_of(sandbox, exec)?;
            let agent_id = agent_id_of(&record)?;
            let agent = vm.process.agent();
            let lock = self.stdin_lock(sandbox, exec);
            let _guard = tokio::time::timeout(STDIN_LOCK_WAIT, lock.lock())
                .await
                .map_err(|_| {
                    Error::Conflict(format!(
                        "exec {exec}: an earlier stdin write is still waiting for the program"
                    ))
                })?;
            let fail = |e| process_error(&record, e);
            let from = match offset {
                Some(o) => o,
                None => agent.write_stdin(agent_id, 0, &[]).await.map_err(fail)?,
            };
            let accepted = agent
                .write_stdin(agent_id, from, data)
                .await
                .map_err(fail)?;
            let end = from.saturating_add(data.len() as u64);
            let closed = close && accepted >= end;
            if closed {
                agent.close_stdin(agent_id).await.map_err(fail)?;
            }
            Ok((
                StdinWritten {
                    accepted,
                    open: !closed,
                },
                from,
            ))
        }
        .await;
        let detail = match (&written, offset) {
            (Ok((w, from)), _) => Some(format!(
                "at offset {from}, accepted up to {}{}",
                w.accepted,
                if w.open { "" } else { ", closed" }
            )),
            (Err(_), Some(o)) => Some(format!("at offset {o}")),
            (Err(_), None) => None,
        };
        self.audit(
            caller,
            AuditKind::Stdin,
            Some(sandbox),
            AuditWhat {
                exec_id: Some(exec.to_string()),
                bytes: Some(data.len() as u64),
                detail,
                ..AuditWhat::default()
            },
            AuditResult::of(&written),
        );
        written.map(|(w, _)| w)
    }

    /// `POST .../execs/{exec}/signal`: `signal` to its process group.
    pub async fn signal_exec(
        &self,
        sandbox: &str,
        exec: &str,
        signal: i32,
        caller: &Actor,
    ) -> Result<()> {
        let (vm, record) = self.exec_of(sandbox, exec)?;
        let agent_id = agent_id_of(&record)?;
        let r = vm
            .process
            .agent()
            .signal(agent_id, signal)
            .await
            .map_err(|e| process_error(&record, e));
        self.audit(
            caller,
            AuditKind::Signal,
            Some(sandbox),
            AuditWhat {
                exec_id: Some(exec.to_string()),
                signal: Some(signal),
                ..AuditWhat::default()
            },
            AuditResult::of(&r),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use kiln_agent::protocol::ExitStatus;

    use super::*;

    #[test]
    fn listings_combine_the_record_and_the_agent() {
        let record = ExecRecord {
            id: "exec-1".into(),
            sandbox_id: "sbx".into(),
            agent_id: Some(3),
            ..ExecRecord::default()
        };
        let mut p = ProcessInfo {
            id: 3,
            first_seq: 2,
            last_seq: 5,
            stdin_open: true,
            ..ProcessInfo::default()
        };
        let running = info_of(record.clone(), Some(&p));
        assert_eq!(
            (
                running.state,
                running.stdin_open,
                running.first_seq,
                running.last_seq
            ),
            (ExecState::Running, true, 2, 5)
        );
        p.exit = Some(ExitStatus {
            code: Some(3),
            ..ExitStatus::default()
        });
        let exited = info_of(record.clone(), Some(&p));
        assert_eq!(exited.state, ExecState::Exited);
        assert_eq!(exited.result.map(|r| r.exit_code), Some(Some(3)));
        let gone = info_of(record, None);
        assert_eq!((gone.state, gone.result), (ExecState::Gone, None));
    }
}
