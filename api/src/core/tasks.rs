//! Background work: the pool reconciler (refill, recycle old VMs, bounded
//! parallel boots, backoff), the expiry task (TTL, idle, `expiring`
//! notices, tombstone purge) and the drain on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::foreground::REFILL_YIELD;
use super::sandboxes::clock_of;
use super::store::VmPhase;
use super::vms::{BootFailure, Vm};
use super::warm_up::warm_up;
use super::{metrics, Core};
use crate::auth::Actor;
use crate::error::EndReason;
use crate::model::{now_ms, EventKind};

/// How often the expiry task looks even when nothing woke it.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// How often old tombstones and idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Core {
    pub(super) fn start_tasks(&self) {
        let core = self.clone();
        self.inner
            .tasks
            .spawn(async move { core.reconciler().await });
        let core = self.clone();
        self.inner.tasks.spawn(async move { core.expirer().await });
        let core = self.clone();
        self.inner
            .tasks
            .spawn(async move { core.audit_pruner().await });
    }

    async fn reconciler(&self) {
        let interval = Duration::from_millis(self.config().pool.reconcile_interval_ms);
        loop {
            self.reload_templates();
            self.reconcile_once();
            tokio::select! {
                () = self.inner.reconcile.notified() => {}
                () = tokio::time::sleep(interval) => {}
                () = self.inner.stop.cancelled() => return,
            }
        }
    }

    /// One pass over every pool: recycle VMs past their max age, start the
    /// boots each pool wants within the limits.
    pub(super) fn reconcile_once(&self) {
        if self.draining() {
            return;
        }
        let now = Instant::now();
        let max_age = Duration::from_secs(self.config().pool.max_age_secs);
        let parallel = self.config().limits.max_parallel_boots;
        let mut recycle = Vec::new();
        let mut boots = Vec::new();
        {
            let mut st = self.state();
            let names: Vec<String> = st.pools.keys().cloned().collect();
            for name in names {
                let Ok(template) = self.template(&name) else {
                    continue;
                };
                let mem = u64::from(template.mem_mib);
                let room = self.inner.limits.room_for(st.usage, mem);
                let parallel_left = parallel.saturating_sub(st.booting);
                let Some(pool) = st.pools.get_mut(&name) else {
                    continue;
                };
                recycle.extend(pool.take_expired(now, max_age));
                // Rolling: VMs of an earlier revision of a rebuilt template.
                recycle.extend(pool.take_where(|vm| vm.revision != template.revision));
                let n = pool.boots_wanted(now, room, parallel_left);
                for _ in 0..n {
                    pool.boot_started();
                    boots.push(template.clone());
                }
                for _ in 0..n {
                    st.booting += 1;
                    st.usage.vms += 1;
                    st.usage.memory_mib += mem;
                }
            }
        }
        for vm in recycle {
            tracing::info!(vm_id = %vm.id, template = %vm.template, "recycling a pooled VM past its max age");
            self.forget_vm(&vm.id);
            let core = self.clone();
            self.inner.tasks.spawn(async move { core.retire(vm).await });
        }
        for template in boots {
            let core = self.clone();
            let span = tracing::info_span!("pool", template = %template.name);
            self.inner
                .tasks
                .spawn(async move { core.boot_for_pool(template).await }.instrument(span));
        }
    }

    /// Runs the warm-up exec in a VM bound for the pool; a VM whose agent
    /// does not run it is retired and the boot counts as failed.
    async fn warm_up_for_pool(&self, vm: Arc<Vm>) -> Result<Arc<Vm>, BootFailure> {
        let warmed = tokio::select! {
            r = warm_up(&vm) => r,
            () = self.inner.stop.cancelled() => return Ok(vm),
        };
        match warmed {
            Ok(how) => {
                self.inner
                    .metrics
                    .warm_ups
                    .get_or_create(&metrics::WarmUp {
                        template: vm.template.clone(),
                        result: how.as_str().into(),
                    })
                    .inc();
                Ok(vm)
            }
            Err(e) => {
                tracing::warn!(vm_id = %vm.id, error = %e, "a VM failed its warm-up; retiring it");
                self.forget_vm(&vm.id);
                self.retire(vm).await;
                Err(BootFailure {
                    error: crate::Error::BootTimeout(e.to_string()),
                    stage: "warm_up",
                    guest_fault: true,
                })
            }
        }
    }

    async fn boot_for_pool(&self, template: crate::template::Template) {
        // Creates and foreground execs first (see `foreground.rs`).
        tokio::select! {
            () = self.inner.foreground.quiet(REFILL_YIELD) => {}
            () = self.inner.stop.cancelled() => return,
        }
        let result = tokio::select! {
            r = self.boot_vm(&template) => r,
            () = self.inner.stop.cancelled() => return,
        };
        let result = match result {
            Ok(vm) => self.warm_up_for_pool(vm).await,
            Err(f) => Err(f),
        };
        let now = Instant::now();
        match result {
            Ok(vm) => {
                // Not into a pool that is gone or whose template was
                // rebuilt while it booted.
                let current = self.template(&template.name).ok().map(|t| t.revision);
                let keep = !self.draining() && current == Some(vm.revision.clone());
                if keep {
                    self.set_phase(&vm, VmPhase::Pooled, None);
                }
                let kept = {
                    let mut st = self.state();
                    match st.pools.get_mut(&template.name) {
                        Some(pool) if keep => {
                            pool.boot_succeeded(now, Arc::clone(&vm));
                            true
                        }
                        Some(pool) => {
                            pool.boot_abandoned();
                            false
                        }
                        None => false,
                    }
                };
                if !kept {
                    self.forget_vm(&vm.id);
                    self.retire(vm).await;
                }
                self.inner.changed.notify_waiters();
            }
            Err(BootFailure {
                error: e, stage, ..
            }) => {
                let delay = {
                    let mut st = self.state();
                    st.pools
                        .get_mut(&template.name)
                        .map(|p| p.boot_failed(now, e.to_string(), &self.inner.backoff))
                };
                tracing::warn!(error = %e, stage, backoff = ?delay, "pool boot failed");
                self.count_boot_failure(&template.name, stage);
                self.inner.events.emit(
                    EventKind::PoolError,
                    None,
                    Some(&template.name),
                    None,
                    None,
                    Some(e.to_string()),
                );
            }
        }
        self.inner.reconcile.notify_one();
    }

    async fn expirer(&self) {
        let notice = self
            .config()
            .timeouts
            .expiring_notice_secs
            .saturating_mul(1000);
        let mut last_purge = Instant::now() - PURGE_EVERY;
        loop {
            let now = now_ms();
            let mut due = Vec::new();
            let mut notices = Vec::new();
            let mut next = now.saturating_add(EXPIRY_TICK.as_millis() as u64);
            {
                let mut st = self.state();
                for (id, s) in st.sandboxes.iter_mut() {
                    let clock = clock_of(&s.info);
                    let deadline = clock.deadline();
                    if let Some(reason) = clock.expired(now) {
                        due.push((id.clone(), reason));
                        continue;
                    }
                    let notice_at = clock.notice_at(notice);
                    if now >= notice_at && s.notice_sent_for != Some(deadline.at_ms) {
                        s.notice_sent_for = Some(deadline.at_ms);
                        notices.push((id.clone(), s.info.template.clone(), deadline));
                    }
                    let wake = if s.notice_sent_for == Some(deadline.at_ms) {
                        deadline.at_ms
                    } else {
                        notice_at
                    };
                    next = next.min(wake);
                }
            }
            for (id, template, deadline) in notices {
                self.inner.events.emit(
                    EventKind::Expiring,
                    Some(&id),
                    Some(&template),
                    Some(deadline.reason),
                    Some(deadline.at_ms),
                    None,
                );
            }
            for (id, reason) in due {
                let core = self.clone();
                self.inner
                    .tasks
                    .spawn(async move { core.end_sandbox(&id, reason, &Actor::System).await });
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                self.purge();
            }
            let wait = Duration::from_millis(next.saturating_sub(now_ms()).max(10));
            tokio::select! {
                () = self.inner.expiry.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = self.inner.stop.cancelled() => return,
            }
        }
    }

    fn purge(&self) {
        let keep_ms = self
            .config()
            .timeouts
            .tombstone_retention_secs
            .saturating_mul(1000);
        let before = now_ms().saturating_sub(keep_ms);
        if let Err(e) = self.inner.store.purge_tombstones(before) {
            tracing::warn!(error = %e, "purging tombstones");
        }
        if let Err(e) = self.inner.store.purge_keys(before, false) {
            tracing::warn!(error = %e, "purging idempotency keys");
        }
    }

    /// Drains: no new work, running execs get up to the drain timeout, then
    /// every VM stops (sandboxes end with reason `shutdown`) and the
    /// background tasks end.
    pub async fn shutdown(&self) {
        if self.inner.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("draining");
        let limit = Duration::from_secs(self.config().timeouts.drain_timeout_secs);
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let running: u32 = self
                .state()
                .sandboxes
                .values()
                .map(|s| s.info.running_execs)
                .sum();
            if running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ids: Vec<String> = self.state().sandboxes.keys().cloned().collect();
        for id in ids {
            self.end_sandbox(&id, EndReason::Shutdown, &Actor::System)
                .await;
        }
        let pooled: Vec<_> = {
            let mut st = self.state();
            st.pools
                .values_mut()
                .flat_map(|p| std::mem::take(&mut p.ready))
                .map(|(_, vm)| vm)
                .collect()
        };
        for vm in pooled {
            self.forget_vm(&vm.id);
            self.retire(vm).await;
        }
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Boots cut short by the stop left their VMs behind.
        let left: Vec<_> = self
            .state()
            .vms
            .values()
            .map(|s| Arc::clone(&s.vm))
            .collect();
        for vm in left {
            self.forget_vm(&vm.id);
            self.retire(vm).await;
        }
        tracing::info!("drained");
    }
}
