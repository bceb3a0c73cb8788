//! Sandboxes: create (claim from the pool, else cold boot, wait or 429),
//! late-binding, get/list/patch/keepalive, delete, and the end of a
//! sandbox (tombstone, event, VM retired).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::profile::Phases;
use super::store::{Reservation, VmPhase};
use super::timeouts::Clock;
use super::tokens::{check_token, CheckedToken};
use super::vms::Vm;
use super::{metrics, new_id, Core, Sandbox};
use crate::auth::Actor;
use crate::config::TimeoutsConfig;
use crate::error::EndReason;
use crate::model::{
    now_ms, AuditKind, AuditResult, AuditWhat, EgressSpec, EventKind, InlineFile, IssuedToken,
    LaunchType, OnEmpty, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec, SandboxState,
};
use crate::{Error, Result};

/// Most files a create may carry, and their total decoded size.
const MAX_INLINE_FILES: usize = 256;

/// Boots a cold create tries when the guest crashes while booting.
const COLD_BOOT_ATTEMPTS: u32 = 2;

/// Longest `wait_ms` a create may ask for.
pub(crate) const MAX_WAIT_MS: u64 = 600_000;

/// A create's outcome.
pub(crate) struct Created {
    /// The sandbox.
    pub sandbox: SandboxInfo,
    /// An idempotent replay of an earlier create.
    pub replayed: bool,
    /// The token asked for (a replay issues a fresh one).
    pub token: Option<IssuedToken>,
}

/// Hex SHA-256 of a request body, for idempotency keys.
pub(crate) fn body_hash<T: serde::Serialize>(body: &T) -> String {
    let json = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks an environment variable name.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::invalid(format!(
                "invalid environment variable {k:?}: names are non-empty without '=' or NUL"
            )));
        }
    }
    Ok(())
}

/// Checks a guest path: bounded, no NUL, and no `..` (paths stay inside
/// the sandbox; the agent confines them too).
pub(crate) fn check_path(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > kiln_agent::protocol::files::MAX_PATH {
        return Err(Error::invalid(format!(
            "a path must have 1 to {} bytes",
            kiln_agent::protocol::files::MAX_PATH
        )));
    }
    if path.contains('\0') {
        return Err(Error::invalid("a path may not contain NUL"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(Error::invalid(format!(
            "path {path:?} leaves the sandbox: '..' is not allowed"
        )));
    }
    Ok(())
}

fn decode_file(f: &InlineFile) -> Result<Vec<u8>> {
    check_path(&f.path)?;
    match (&f.content, &f.content_b64) {
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(b64)) => crate::b64::decode(b64),
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => Err(Error::invalid(format!(
            "file {}: give content or content_b64, not both",
            f.path
        ))),
    }
}

/// What a create's spec says, checked.
pub(crate) struct CheckedCreate {
    /// Time to live, seconds.
    pub ttl: u64,
    /// Idle timeout, seconds.
    pub idle: u64,
    /// Inline files: path, mode, bytes.
    pub files: Vec<(String, Option<u32>, Vec<u8>)>,
    /// How long to wait for a pooled VM (`on_empty: wait`).
    pub wait: Option<Duration>,
    /// The token to issue.
    pub token: Option<CheckedToken>,
}

/// Checks a create's spec against the allowed ranges (the template is
/// looked up by the core).
pub(crate) fn check_create(spec: &SandboxSpec, t: &TimeoutsConfig) -> Result<CheckedCreate> {
    let ttl = t.ttl().check("ttl_secs", spec.ttl_secs)?;
    let idle = t
        .idle()
        .check("idle_timeout_secs", spec.idle_timeout_secs)?;
    check_env(&spec.env)?;
    if let Some(cwd) = &spec.cwd {
        check_path(cwd)?;
    }
    if spec.files.len() > MAX_INLINE_FILES {
        return Err(Error::out_of_range(
            "files",
            spec.files.len() as u64,
            0,
            MAX_INLINE_FILES as u64,
        ));
    }
    let files = spec
        .files
        .iter()
        .map(|f| Ok((f.path.clone(), f.mode, decode_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let wait = match spec.on_empty {
        OnEmpty::Wait => Some(Duration::from_millis(spec.wait_ms.map_or(
            Ok(30_000),
            |w| {
                crate::model::Range {
                    min: 0,
                    max: MAX_WAIT_MS,
                    default: 30_000,
                }
                .check("wait_ms", Some(w))
            },
        )?)),
        _ => None,
    };
    let token = spec.token.as_ref().map(|r| check_token(r, t)).transpose()?;
    if let Some(egress) = &spec.egress {
        super::egress::check_egress(egress)?;
    }
    Ok(CheckedCreate {
        ttl,
        idle,
        files,
        wait,
        token,
    })
}

/// Checks a patch's timeouts; returns the new TTL and idle timeout.
pub(crate) fn check_patch(
    patch: &SandboxPatch,
    t: &TimeoutsConfig,
) -> Result<(Option<u64>, Option<u64>)> {
    let ttl = patch
        .ttl_secs
        .map(|v| t.ttl().check("ttl_secs", Some(v)))
        .transpose()?;
    let idle = patch
        .idle_timeout_secs
        .map(|v| t.idle().check("idle_timeout_secs", Some(v)))
        .transpose()?;
    Ok((ttl, idle))
}

impl Core {
    /// Creates a sandbox (see [`SandboxSpec`]).
    pub async fn create(
        &self,
        spec: SandboxSpec,
        key: Option<String>,
        caller: &Actor,
    ) -> Result<Created> {
        let mut phases = Phases::start("create");
        self.refuse_if_draining()?;
        let template_name = spec
            .template
            .clone()
            .unwrap_or_else(|| self.config().default_template.clone());
        let template = self.template(&template_name)?;
        let CheckedCreate {
            ttl,
            idle,
            files,
            wait,
            token,
        } = check_create(&spec, &self.config().timeouts)?;
        let egress = self.egress_of(&template_name, spec.egress.as_ref())?;
        phases.mark("checks");
        let scope = "create";
        if let Some(key) = &key {
            match self
                .inner
                .store
                .reserve(scope, key, &body_hash(&spec), now_ms())?
            {
                Reservation::New => {}
                Reservation::Replay(id) => {
                    let sandbox = match self.inner.store.sandbox(&id)? {
                        Some(s) => self.live_info(&id).unwrap_or(s),
                        None => self.get(&id)?,
                    };
                    // A token only for a sandbox that still lives.
                    let token = token
                        .filter(|_| sandbox.end_reason.is_none())
                        .map(|t| self.issue_token(&sandbox, &t, caller));
                    return Ok(Created {
                        sandbox,
                        replayed: true,
                        token,
                    });
                }
                Reservation::InFlight => {
                    return Err(Error::Conflict(format!(
                        "a create with Idempotency-Key {key:?} is still in progress"
                    )))
                }
                Reservation::Mismatch => {
                    return Err(Error::Conflict(format!(
                        "Idempotency-Key {key:?} was used with another request body"
                    )))
                }
            }
        }
        let id = new_id("sbx");
        let span = tracing::info_span!("sandbox", sandbox_id = %id, template = %template_name);
        let result = self
            .create_inner(
                &id,
                &template,
                spec,
                egress,
                files,
                ttl,
                idle,
                wait,
                caller.uid(),
                &mut phases,
            )
            .instrument(span.clone())
            .await;
        if let Some(key) = &key {
            let recorded = match &result {
                Ok(_) => self.inner.store.complete(scope, key, &id),
                Err(_) => self.inner.store.release(scope, key),
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "idempotency key not recorded");
            }
        }
        let issued = match (&result, &token) {
            (Ok(info), Some(t)) => Some(self.issue_token(info, t, caller)),
            _ => None,
        };
        let mut detail = format!("template {template_name}");
        if let Some(t) = &issued {
            let ops: Vec<&str> = t.ops.iter().map(|o| o.as_str()).collect();
            detail.push_str(&format!("; token for {} ({})", t.subject, ops.join(",")));
        }
        self.audit(
            caller,
            AuditKind::Create,
            Some(&id),
            AuditWhat {
                detail: Some(detail),
                ..AuditWhat::default()
            },
            AuditResult::of(&result),
        );
        phases.mark("audit");
        span.in_scope(|| phases.log());
        Ok(Created {
            sandbox: result?,
            replayed: false,
            token: issued,
        })
    }

    #[allow(clippy::too_many_arguments)] // one private step of create
    async fn create_inner(
        &self,
        id: &str,
        template: &crate::template::Template,
        spec: SandboxSpec,
        egress: Option<EgressSpec>,
        files: Vec<(String, Option<u32>, Vec<u8>)>,
        ttl: u64,
        idle: u64,
        wait: Option<Duration>,
        caller: Option<u32>,
        phases: &mut Phases,
    ) -> Result<SandboxInfo> {
        let started = Instant::now();
        let created_at_ms = now_ms();
        self.inner.events.emit(
            EventKind::Created,
            Some(id),
            Some(&template.name),
            None,
            None,
            None,
        );
        phases.mark("event_created");
        let (vm, launch) = self.obtain_vm(template, spec.on_empty, wait).await?;
        // Foreground from the claim on: a create still waiting for a VM
        // (or cold-booting one) must not hold back the refills it needs.
        let _busy = self.inner.foreground.begin();
        phases.mark("claim");
        self.set_phase(&vm, VmPhase::Claimed, Some(id));
        phases.mark("vm_row");
        // Late binding: what the agent can apply to any pooled VM.
        for (path, mode, data) in files {
            let upload = vm
                .process
                .upload(&path, mode, std::io::Cursor::new(data))
                .await;
            if let Err(e) = upload {
                self.forget_vm(&vm.id);
                self.retire(vm).await;
                return Err(super::files::vm_error(e));
            }
        }
        // The proxy and its variables: late-bound like the files.
        // The template's environment under the create's.
        let mut env = template.env.clone();
        env.extend(spec.env);
        let proxy = match &egress {
            None => None,
            Some(allow) => match self.attach_egress(id, &vm, allow) {
                Ok(p) => {
                    for (k, v) in super::egress::proxy_env() {
                        env.entry(k).or_insert(v);
                    }
                    Some(p)
                }
                Err(e) => {
                    self.forget_vm(&vm.id);
                    self.retire(vm).await;
                    return Err(e);
                }
            },
        };
        phases.mark("files_egress");
        let ready_at_ms = now_ms();
        let mut info = SandboxInfo {
            id: id.to_string(),
            template: template.name.clone(),
            state: SandboxState::Ready,
            launch_type: launch,
            labels: spec.labels,
            env,
            cwd: spec.cwd.or_else(|| template.working_dir.clone()),
            egress,
            ttl_secs: ttl,
            idle_timeout_secs: idle,
            created_at_ms,
            ready_at_ms: Some(ready_at_ms),
            last_activity_ms: ready_at_ms,
            expires_at_ms: None,
            running_execs: 0,
            created_by_uid: caller,
            ended_at_ms: None,
            end_reason: None,
        };
        info.expires_at_ms = Some(clock_of(&info).deadline().at_ms);
        if self.draining() {
            self.forget_vm(&vm.id);
            self.retire(vm).await;
            return Err(Error::Draining);
        }
        self.inner.store.put_sandbox(&info)?;
        phases.mark("sandbox_row");
        self.state().sandboxes.insert(
            id.to_string(),
            Sandbox {
                info: info.clone(),
                vm,
                notice_sent_for: None,
                execs: Default::default(),
                egress: proxy,
            },
        );
        let m = &self.inner.metrics;
        m.claims
            .get_or_create(&metrics::Claim {
                template: template.name.clone(),
                launch_type: launch.as_str().into(),
            })
            .inc();
        m.claim_duration
            .get_or_create(&metrics::LaunchLabel {
                launch_type: launch.as_str().into(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.inner.events.emit(
            EventKind::Ready,
            Some(id),
            Some(&template.name),
            None,
            None,
            None,
        );
        phases.mark("event_ready");
        tracing::info!(launch = launch.as_str(), took = ?started.elapsed(), "sandbox ready");
        self.inner.expiry.notify_one();
        Ok(info)
    }

    /// A VM for a new sandbox: a pooled one (warm), else per `on_empty`.
    async fn obtain_vm(
        &self,
        template: &crate::template::Template,
        on_empty: OnEmpty,
        wait: Option<Duration>,
    ) -> Result<(Arc<Vm>, LaunchType)> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let claimed = {
                let mut st = self.state();
                st.pools.get_mut(&template.name).and_then(|p| p.claim())
            };
            if let Some(vm) = claimed {
                self.inner.reconcile.notify_one();
                if vm.process.ended().is_some() {
                    // Died in the pool; its watcher cleans up.
                    continue;
                }
                if vm.revision != template.revision {
                    // Of a template since rebuilt: never handed out.
                    self.forget_vm(&vm.id);
                    let core = self.clone();
                    self.inner.tasks.spawn(async move { core.retire(vm).await });
                    continue;
                }
                return Ok((vm, LaunchType::Warm));
            }
            match on_empty {
                OnEmpty::Fail => {
                    return Err(Error::PoolExhausted {
                        template: template.name.clone(),
                    })
                }
                OnEmpty::Cold => return Ok((self.boot_cold(template).await?, LaunchType::Cold)),
                OnEmpty::Wait => {
                    let deadline = deadline.unwrap_or_else(tokio::time::Instant::now);
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(Error::PoolExhausted { template: template.name.clone() });
                        }
                    }
                }
            }
        }
    }

    /// Boots a VM for one sandbox. A guest that crashes, or never
    /// answers, before its agent answers is booted once more: no user code
    /// ran yet and nothing the caller sent was refused, so the caller
    /// should not see a transient guest fault; both failures are logged
    /// and counted.
    async fn boot_cold(&self, template: &crate::template::Template) -> Result<Arc<Vm>> {
        let mut attempts_left = COLD_BOOT_ATTEMPTS;
        loop {
            attempts_left -= 1;
            self.admit(u64::from(template.mem_mib))?;
            match self.boot_vm(template).await {
                Ok(vm) => return Ok(vm),
                Err(failure) => {
                    self.count_boot_failure(&template.name, failure.stage);
                    if !failure.guest_fault || attempts_left == 0 {
                        return Err(failure.error);
                    }
                    tracing::warn!(error = %failure.error, "the guest crashed or never answered while booting; booting again");
                }
            }
        }
    }

    pub(super) fn count_boot_failure(&self, template: &str, stage: &str) {
        self.inner
            .metrics
            .boot_failures
            .get_or_create(&metrics::BootFailure {
                template: template.to_string(),
                stage: stage.to_string(),
            })
            .inc();
    }

    /// The live sandbox's info.
    fn live_info(&self, id: &str) -> Option<SandboxInfo> {
        self.state().sandboxes.get(id).map(|s| s.info.clone())
    }

    /// Counts an API call as activity; returns the live sandbox's VM, or
    /// the tombstone's 410, or 404.
    pub(super) fn touch(&self, id: &str) -> Result<(Arc<Vm>, SandboxInfo)> {
        {
            let mut st = self.state();
            if let Some(s) = st.sandboxes.get_mut(id) {
                s.info.last_activity_ms = now_ms();
                s.info.expires_at_ms = Some(clock_of(&s.info).deadline().at_ms);
                return Ok((Arc::clone(&s.vm), s.info.clone()));
            }
            if let Some(reason) = st.ending.get(id) {
                return Err(Error::SandboxExpired {
                    id: id.to_string(),
                    reason: *reason,
                });
            }
        }
        match self.inner.store.sandbox(id)? {
            Some(SandboxInfo {
                end_reason: Some(reason),
                ..
            }) => Err(Error::SandboxExpired {
                id: id.to_string(),
                reason,
            }),
            _ => Err(Error::NotFound(format!("sandbox {id:?}"))),
        }
    }

    /// `GET /v1/sandboxes/{id}` (counts as activity).
    pub fn get(&self, id: &str) -> Result<SandboxInfo> {
        self.touch(id).map(|(_, info)| info)
    }

    /// `POST /v1/sandboxes/{id}/keepalive`.
    pub fn keepalive(&self, id: &str) -> Result<SandboxInfo> {
        let info = self.get(id)?;
        self.inner.expiry.notify_one();
        Ok(info)
    }

    /// `GET /v1/sandboxes`.
    pub fn list(&self, filter: &SandboxFilter) -> Result<Vec<SandboxInfo>> {
        let mut out: Vec<SandboxInfo> = if filter.state == Some(SandboxState::Ended) {
            self.inner.store.sandboxes(true)?
        } else {
            self.state()
                .sandboxes
                .values()
                .map(|s| s.info.clone())
                .collect()
        };
        out.retain(|s| filter.matches(s));
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// `PATCH /v1/sandboxes/{id}`.
    pub fn patch(&self, id: &str, patch: SandboxPatch, caller: &Actor) -> Result<SandboxInfo> {
        let (ttl, idle) = check_patch(&patch, &self.config().timeouts)?;
        self.touch(id)?;
        let info = {
            let mut st = self.state();
            let s = st
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(format!("sandbox {id:?}")))?;
            for (k, v) in patch.labels {
                if v.is_empty() {
                    s.info.labels.remove(&k);
                } else {
                    s.info.labels.insert(k, v);
                }
            }
            if let Some(ttl) = ttl {
                s.info.ttl_secs = ttl;
            }
            if let Some(idle) = idle {
                s.info.idle_timeout_secs = idle;
            }
            s.info.expires_at_ms = Some(clock_of(&s.info).deadline().at_ms);
            s.notice_sent_for = None;
            s.info.clone()
        };
        self.inner.store.put_sandbox(&info)?;
        self.audit(
            caller,
            AuditKind::Patch,
            Some(id),
            AuditWhat::default(),
            AuditResult::ok(),
        );
        self.inner.expiry.notify_one();
        Ok(info)
    }

    /// `DELETE /v1/sandboxes/{id}`: the VM is killed and its files removed
    /// before this returns; the sandbox leaves a tombstone.
    pub async fn delete(&self, id: &str, caller: &Actor) -> Result<SandboxInfo> {
        self.touch(id)?;
        let ended = self
            .end_sandbox(id, EndReason::Deleted, caller)
            .await
            .ok_or_else(|| Error::NotFound(format!("sandbox {id:?}")))?;
        Ok(ended)
    }

    /// Ends a live sandbox: tombstone, event, metrics, VM retired. Returns
    /// the tombstone, or `None` when it was not live.
    pub(super) async fn end_sandbox(
        &self,
        id: &str,
        reason: EndReason,
        caller: &Actor,
    ) -> Option<SandboxInfo> {
        let Sandbox {
            mut info,
            vm,
            execs,
            egress,
            ..
        } = {
            let mut st = self.state();
            let sandbox = st.sandboxes.remove(id)?;
            st.ending.insert(id.to_string(), reason);
            sandbox
        };
        // No way out from here on: the listener and its connections close.
        drop(egress);
        self.forget_vm(&vm.id);
        info.state = SandboxState::Ended;
        info.end_reason = Some(reason);
        info.ended_at_ms = Some(now_ms());
        info.running_execs = 0;
        if let Err(e) = self.inner.store.put_sandbox(&info) {
            tracing::warn!(sandbox_id = %id, error = %e, "tombstone not recorded");
        }
        self.state().ending.remove(id);
        let kind = if reason == EndReason::Deleted {
            EventKind::Deleted
        } else {
            EventKind::Expired
        };
        self.inner.events.emit(
            kind,
            Some(id),
            Some(&info.template),
            Some(reason),
            None,
            None,
        );
        self.inner
            .metrics
            .expirations
            .get_or_create(&metrics::ReasonLabel {
                reason: reason.as_str().into(),
            })
            .inc();
        let kind = if reason == EndReason::Deleted {
            AuditKind::Delete
        } else {
            AuditKind::End
        };
        self.audit(
            caller,
            kind,
            Some(id),
            AuditWhat {
                detail: Some(reason.as_str().to_string()),
                ..AuditWhat::default()
            },
            AuditResult::ok(),
        );
        // Execs still running die with the VM: their end is this one.
        for exec in execs.running.keys() {
            self.finish_exec(id, exec, None);
        }
        tracing::info!(sandbox_id = %id, reason = reason.as_str(), "sandbox ended");
        self.retire(vm).await;
        Some(info)
    }
}

/// The timeout clock of a sandbox.
pub(super) fn clock_of(info: &SandboxInfo) -> Clock {
    Clock {
        ready_at_ms: info.ready_at_ms.unwrap_or(info.created_at_ms),
        ttl_ms: info.ttl_secs.saturating_mul(1000),
        last_activity_ms: info.last_activity_ms,
        idle_ms: info.idle_timeout_secs.saturating_mul(1000),
        running_execs: info.running_execs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_env_are_checked() {
        check_path("a/b.txt").expect("relative");
        check_path("/home/sandbox/x").expect("absolute");
        check_path("a..b").expect("dots inside a name are fine");
        for bad in ["", "../etc/passwd", "a/../../b", "/x/..", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&"a".repeat(4097)).is_err());
        let env = |k: &str| [(k.to_string(), "v".to_string())].into();
        check_env(&env("PATH")).expect("ok");
        for bad in ["", "A=B", "A\0"] {
            assert!(check_env(&env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn body_hash_tells_bodies_apart() {
        let a = SandboxSpec::default();
        let b = SandboxSpec {
            ttl_secs: Some(5),
            ..SandboxSpec::default()
        };
        assert_eq!(body_hash(&a), body_hash(&a.clone()));
        assert_ne!(body_hash(&a), body_hash(&b));
        assert_eq!(body_hash(&a).len(), 64);
    }

    #[test]
    fn inline_files_decode_one_way_only() {
        let f = |content: Option<&str>, b64: Option<&str>| InlineFile {
            path: "f".into(),
            content: content.map(str::to_string),
            content_b64: b64.map(str::to_string),
            mode: None,
        };
        assert_eq!(decode_file(&f(Some("hi"), None)).expect("text"), b"hi");
        assert_eq!(decode_file(&f(None, Some("AAE="))).expect("b64"), [0, 1]);
        assert!(decode_file(&f(Some("a"), Some("AA=="))).is_err());
        assert!(decode_file(&f(None, Some("***"))).is_err());
    }
}
