//! A VM's first exec, run before it enters a pool. A clone restored from
//! a template snapshot has touched only the pages its template held when
//! snapshotted, and a booted VM has never started a program: the first
//! exec faults in (and, in a clone, copies on write) the agent's exec
//! path, the sandbox entry and the shell. Paid here, it stays off the
//! user's first exec.

use std::time::Duration;

use kiln_agent::protocol::ExecRequest;
use tokio::sync::mpsc;

use super::vms::Vm;
use crate::vm_process::AgentError;

/// The no-op program: a shell, as most user commands start one.
const WARM_UP_ARGV: [&str; 3] = ["sh", "-c", "true"];
/// How long the agent lets it run.
const WARM_UP_TIMEOUT_MS: u64 = 10_000;
/// How long the whole exec may take before the VM counts as stuck.
const WARM_UP_DEADLINE: Duration = Duration::from_secs(30);

/// Why a warm-up failed: the VM is then not pooled.
#[derive(Debug, thiserror::Error)]
pub(super) enum WarmUpError {
    /// The agent could not be reached, or stopped answering.
    #[error("warm-up exec: {0}")]
    Agent(#[source] AgentError),
    /// No result within the deadline.
    #[error("warm-up exec: no result within {WARM_UP_DEADLINE:?}")]
    Deadline,
}

/// How a warm-up went when the VM may be pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WarmedUp {
    /// The program ran (whatever its exit status).
    Ran,
    /// The agent would not start it (a template without `sh`).
    Refused,
}

impl WarmedUp {
    /// The metric's label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Ran => "ran",
            Self::Refused => "refused",
        }
    }
}

/// Runs the warm-up exec in `vm`. The agent refusing the program (a
/// template without `sh`) or the program failing is no fault of the VM;
/// the agent not answering is.
pub(super) async fn warm_up(vm: &Vm) -> Result<WarmedUp, WarmUpError> {
    let request = ExecRequest {
        argv: WARM_UP_ARGV.iter().map(|a| a.to_string()).collect(),
        timeout_ms: Some(WARM_UP_TIMEOUT_MS),
        ..ExecRequest::default()
    };
    // Its output (none expected) is dropped with the receiver.
    let (output, _) = mpsc::channel(1);
    let exec = vm.process.agent().exec(request, None, output);
    match tokio::time::timeout(WARM_UP_DEADLINE, exec).await {
        Err(_) => Err(WarmUpError::Deadline),
        Ok(Ok(status)) => {
            tracing::debug!(?status, "warm-up exec done");
            Ok(WarmedUp::Ran)
        }
        Ok(Err(e)) if e.agent_code().is_some() => {
            tracing::info!(error = %e, "warm-up exec refused; the VM is pooled cold");
            Ok(WarmedUp::Refused)
        }
        Ok(Err(e)) => Err(WarmUpError::Agent(e)),
    }
}
