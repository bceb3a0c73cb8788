//! Recording to the audit trail and reading it back; the retention task.
//! A record that cannot be written is logged, never fails the action it
//! describes (the action already happened).

use std::time::Duration;

use super::Core;
use crate::auth::Actor;
use crate::model::{now_ms, AuditFilter, AuditKind, AuditRecord, AuditResult, AuditWhat};
use crate::Result;

impl Core {
    /// Appends one record: `actor` did `kind` to `sandbox`.
    pub(crate) fn audit(
        &self,
        actor: &Actor,
        kind: AuditKind,
        sandbox: Option<&str>,
        what: AuditWhat,
        result: AuditResult,
    ) {
        let record = AuditRecord {
            id: 0,
            at_ms: now_ms(),
            uid: actor.uid(),
            subject: actor.subject().map(str::to_string),
            sandbox_id: sandbox.map(str::to_string),
            kind,
            what,
            result,
        };
        if let Err(e) = self.inner.audit.append(&record) {
            tracing::warn!(error = %e, kind = kind.as_str(), "audit record lost");
        }
    }

    /// `GET /v1/audit`.
    pub fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        Ok(self.inner.audit.query(filter)?)
    }

    /// Applies the retention bound now.
    pub(super) fn prune_audit(&self) {
        let c = &self.config().audit;
        let before = now_ms().saturating_sub(c.max_age_secs.saturating_mul(1000));
        match self.inner.audit.prune(c.max_rows, before) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "audit trail pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning the audit trail"),
        }
    }

    /// Applies the retention bound every `audit.prune_interval_secs`.
    pub(super) async fn audit_pruner(&self) {
        let every = Duration::from_secs(self.config().audit.prune_interval_secs);
        loop {
            self.prune_audit();
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.inner.stop.cancelled() => return,
            }
        }
    }
}
