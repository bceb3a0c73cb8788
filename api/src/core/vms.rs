//! VMs: booting (bounded in parallel, admitted against the host limits),
//! watching for their death, and retiring them (a VM is never reused:
//! retiring kills it and removes its run directory).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::admission::Usage;
use super::store::{VmPhase, VmRow};
use super::{metrics, new_id, Core, VmSlot};
use crate::model::{now_ms, EventKind};
use crate::template::Template;
use crate::vm_process::{VmProcess, VmProcessError};
use crate::{Error, Result};

/// Why a boot failed.
#[derive(Debug)]
pub(super) struct BootFailure {
    /// The error the caller reports.
    pub error: Error,
    /// `spawn` or `ready` (the metric's label).
    pub stage: &'static str,
    /// The guest ran and crashed, or never answered, before its agent
    /// did: no host input was refused, so booting again may well succeed.
    pub guest_fault: bool,
}

impl BootFailure {
    fn at(stage: &'static str) -> impl FnOnce(Error) -> Self {
        move |error| BootFailure {
            error,
            stage,
            guest_fault: false,
        }
    }
}

/// How long a restored clone may take to answer before it counts as a
/// guest fault (and a cold create boots again): clones answer in well
/// under a second on hardware and within 1-2 s in the nested testbed,
/// where one in a few hundred stalls for good.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a VM starts.
#[derive(Debug, Clone)]
pub(super) enum Launch {
    /// Boots the kernel.
    Cold,
    /// A clone of the template snapshot in this directory.
    Restore(PathBuf),
    /// Boots the kernel, with its snapshot going to this directory.
    ForSnapshot(PathBuf),
}

/// A live VM.
#[derive(Debug)]
pub(crate) struct Vm {
    /// Id (`vm-...`), also its run directory's name.
    pub id: String,
    /// Template.
    pub template: String,
    /// Guest memory, MiB (what admission counted).
    pub mem_mib: u64,
    /// The template's revision it was booted from (registry templates).
    pub revision: Option<String>,
    /// The process.
    pub process: VmProcess,
}

impl Vm {
    fn usage(&self) -> Usage {
        Usage {
            vms: 1,
            memory_mib: self.mem_mib,
        }
    }
}

fn add(usage: &mut Usage, u: Usage) {
    usage.vms = usage.vms.saturating_add(u.vms);
    usage.memory_mib = usage.memory_mib.saturating_add(u.memory_mib);
}

fn sub(usage: &mut Usage, u: Usage) {
    usage.vms = usage.vms.saturating_sub(u.vms);
    usage.memory_mib = usage.memory_mib.saturating_sub(u.memory_mib);
}

impl Core {
    /// Counts a VM of `mem_mib` against the limits, or names the limit.
    /// The caller then boots it (and [`Core::boot_vm`] gives the count back
    /// when the boot fails).
    pub(super) fn admit(&self, mem_mib: u64) -> Result<()> {
        let mut st = self.state();
        self.inner.limits.admit(st.usage, mem_mib)?;
        add(
            &mut st.usage,
            Usage {
                vms: 1,
                memory_mib: mem_mib,
            },
        );
        st.booting += 1;
        Ok(())
    }

    /// Boots an admitted VM and waits for its agent: a clone of the
    /// template's snapshot when there is one, else a cold boot (which
    /// then starts making the snapshot). On failure the VM is gone and
    /// its admission given back.
    pub(super) async fn boot_vm(&self, template: &Template) -> Result<Arc<Vm>, BootFailure> {
        match self.template_snapshot(template) {
            Some(dir) => {
                let result = self
                    .boot_vm_as(template, Launch::Restore(dir.clone()))
                    .await;
                match &result {
                    Ok(_) => self.snapshot_restored(&dir),
                    Err(f) => {
                        self.snapshot_failed(template, &dir, &f.error.to_string(), f.guest_fault)
                    }
                }
                result
            }
            None => {
                let result = self.boot_vm_as(template, Launch::Cold).await;
                if result.is_ok() {
                    self.want_snapshot(template);
                }
                result
            }
        }
    }

    /// Boots an admitted VM as `launch` says and waits for its agent. On
    /// failure the VM is gone and its admission given back.
    pub(super) async fn boot_vm_as(
        &self,
        template: &Template,
        launch: Launch,
    ) -> Result<Arc<Vm>, BootFailure> {
        let id = new_id("vm");
        let span = tracing::info_span!("vm", vm_id = %id, template = %template.name);
        let admitted = Usage {
            vms: 1,
            memory_mib: u64::from(template.mem_mib),
        };
        let result = self
            .boot_admitted(id, template, launch)
            .instrument(span)
            .await;
        let mut st = self.state();
        st.booting = st.booting.saturating_sub(1);
        if result.is_err() {
            sub(&mut st.usage, admitted);
            drop(st);
            self.inner.changed.notify_waiters();
        }
        result
    }

    async fn boot_admitted(
        &self,
        id: String,
        template: &Template,
        launch: Launch,
    ) -> Result<Arc<Vm>, BootFailure> {
        let _slot = self
            .inner
            .boot_slots
            .acquire()
            .await
            .map_err(|_| BootFailure::at("spawn")(Error::Draining))?;
        let started = Instant::now();
        let run_dir = self.inner.vm_dir.join(&id);
        let launcher = &self.inner.launcher;
        let process = match &launch {
            Launch::Cold => launcher.launch(template, run_dir.clone()),
            Launch::Restore(dir) => launcher.restore(template, run_dir.clone(), dir),
            Launch::ForSnapshot(dir) => {
                launcher.launch_for_snapshot(template, run_dir.clone(), dir)
            }
        }
        .map_err(|e| BootFailure::at("spawn")(Error::BootTimeout(e.to_string())))?;
        let restored = matches!(launch, Launch::Restore(_));
        let vm = Arc::new(Vm {
            id: id.clone(),
            template: template.name.clone(),
            mem_mib: u64::from(template.mem_mib),
            revision: template.revision.clone(),
            process,
        });
        let row = VmRow {
            id: id.clone(),
            template: template.name.clone(),
            identity: vm.process.identity(),
            run_dir,
            agent: vm.process.agent().clone(),
            mem_mib: vm.mem_mib,
            phase: VmPhase::Booting,
            sandbox_id: None,
            ready_at_ms: None,
        };
        if let Err(e) = self.inner.store.put_vm(&row) {
            let _ = vm.process.kill();
            return Err(BootFailure::at("spawn")(e.into()));
        }
        self.state().vms.insert(
            id.clone(),
            VmSlot {
                vm: Arc::clone(&vm),
                phase: VmPhase::Booting,
            },
        );
        self.watch_vm(&vm);
        let mut timeout = Duration::from_secs(self.config().timeouts.boot_timeout_secs);
        if restored {
            timeout = timeout.min(RESTORE_READY_TIMEOUT);
        }
        match vm.process.wait_ready(timeout).await {
            Ok(_) => {
                self.inner
                    .metrics
                    .vm_boot
                    .observe(started.elapsed().as_secs_f64());
                let how = match launch {
                    Launch::Cold => "boot",
                    Launch::Restore(_) => "restore",
                    Launch::ForSnapshot(_) => "snapshot",
                };
                self.inner
                    .metrics
                    .vm_starts
                    .get_or_create(&metrics::VmStart {
                        template: template.name.clone(),
                        how: how.into(),
                    })
                    .inc();
                tracing::info!(took = ?started.elapsed(), how, "VM ready");
                Ok(vm)
            }
            Err(e) => {
                let message = format!("{e} ({})", vm.process.vmm_report());
                // A guest that never answers is a fault like a crash: the
                // VMM took every input, so another boot may well answer
                // (seen in the testbed, cold and restored alike).
                let stalled = matches!(e, VmProcessError::NotReady(_));
                let guest_fault = e.guest_crashed() || stalled;
                tracing::warn!(error = %message, guest_fault, restored, "VM failed to boot");
                self.forget_vm(&id);
                self.retire(vm).await;
                Err(BootFailure {
                    error: Error::BootTimeout(message),
                    stage: "ready",
                    guest_fault,
                })
            }
        }
    }

    /// Moves a VM to `phase` (in memory and in the store).
    pub(super) fn set_phase(&self, vm: &Vm, phase: VmPhase, sandbox_id: Option<&str>) {
        if let Some(slot) = self.state().vms.get_mut(&vm.id) {
            slot.phase = phase;
        }
        let row = VmRow {
            id: vm.id.clone(),
            template: vm.template.clone(),
            identity: vm.process.identity(),
            run_dir: vm.process.run_dir().to_path_buf(),
            agent: vm.process.agent().clone(),
            mem_mib: vm.mem_mib,
            phase,
            sandbox_id: sandbox_id.map(str::to_string),
            ready_at_ms: Some(now_ms()),
        };
        if let Err(e) = self.inner.store.put_vm(&row) {
            tracing::warn!(vm_id = %vm.id, error = %e, "VM state not recorded");
        }
    }

    /// Takes a VM out of the books (memory, admission, store). Returns false
    /// when it was not there (already retired).
    pub(super) fn forget_vm(&self, id: &str) -> bool {
        let removed = {
            let mut st = self.state();
            let slot = st.vms.remove(id);
            if let Some(slot) = &slot {
                let u = slot.vm.usage();
                sub(&mut st.usage, u);
            }
            slot.is_some()
        };
        if removed {
            if let Err(e) = self.inner.store.delete_vm(id) {
                tracing::warn!(vm_id = %id, error = %e, "VM removal not recorded");
            }
            self.inner.changed.notify_waiters();
            self.inner.reconcile.notify_one();
        }
        removed
    }

    /// Kills a VM and waits for it to end; its run directory goes with the
    /// last reference.
    pub(super) async fn retire(&self, vm: Arc<Vm>) {
        if let Err(e) = vm.process.kill() {
            tracing::warn!(vm_id = %vm.id, error = %e, "cannot kill VM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), vm.process.wait()).await;
    }

    /// Starts the task that notices the VM's death.
    pub(super) fn watch_vm(&self, vm: &Arc<Vm>) {
        let core = self.clone();
        let vm = Arc::clone(vm);
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                end = vm.process.wait() => core.on_vm_exit(&vm, &end.to_string()).await,
                () = stop.cancelled() => {}
            }
        });
    }

    /// A VM ended on its own: a pooled one leaves its pool, a claimed one
    /// ends its sandbox (`vm_died`). Booting ones are the boot's business.
    async fn on_vm_exit(&self, vm: &Arc<Vm>, how: &str) {
        let (phase, sandbox) = {
            let st = self.state();
            let Some(slot) = st.vms.get(&vm.id) else {
                return; // retired on purpose
            };
            let sandbox = st
                .sandboxes
                .iter()
                .find(|(_, s)| s.vm.id == vm.id)
                .map(|(id, _)| id.clone());
            (slot.phase, sandbox)
        };
        match phase {
            VmPhase::Booting => {}
            VmPhase::Pooled => {
                tracing::warn!(vm_id = %vm.id, template = %vm.template, how, "pooled VM died");
                {
                    let mut st = self.state();
                    if let Some(p) = st.pools.get_mut(&vm.template) {
                        p.remove(|v| v.id == vm.id);
                    }
                }
                self.inner
                    .metrics
                    .boot_failures
                    .get_or_create(&metrics::BootFailure {
                        template: vm.template.clone(),
                        stage: "pooled".into(),
                    })
                    .inc();
                self.inner.events.emit(
                    EventKind::PoolError,
                    None,
                    Some(&vm.template),
                    None,
                    None,
                    Some(format!("a pooled VM {how}")),
                );
                self.forget_vm(&vm.id);
            }
            VmPhase::Claimed => {
                tracing::warn!(vm_id = %vm.id, sandbox = ?sandbox, how, "VM died under a sandbox");
                if let Some(id) = sandbox {
                    self.end_sandbox(
                        &id,
                        crate::error::EndReason::VmDied,
                        &crate::auth::Actor::System,
                    )
                    .await;
                } else {
                    self.forget_vm(&vm.id);
                }
            }
        }
    }
}
