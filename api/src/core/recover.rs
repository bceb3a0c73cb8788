//! Start-up after a daemon died: VMs run in their own sessions, so they
//! outlive it. Each recorded VM whose identity (pid *and* start time) still
//! matches is re-adopted: pooled ones rejoin their pool after a ping (ones
//! that were booting once their agent answers), claimed ones carry their
//! sandbox on. Dead ones end their sandbox with
//! `vm_died`. Any other VM process started from this state dir (found by
//! its command line) is killed: nothing is left orphaned.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{VmPhase, VmRow};
use super::vms::Vm;
use super::{Core, Sandbox, VmSlot};
use crate::error::EndReason;
use crate::model::{now_ms, SandboxInfo, SandboxState};
use crate::vm_process::{ProcessIdentity, VmProcess};
use crate::Result;

/// How long a re-adopted VM's agent may take to answer.
const ADOPT_PING: Duration = Duration::from_secs(10);

/// Pids of processes whose command line mentions `dir` (VMs this state
/// dir started), leaving out those whose parent is one of them: a jailed
/// kiln-vmm is a supervisor (the pid the daemon started and records) with
/// the VMM as its child, and the child goes when its supervisor goes.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let matched: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(needle) && arg.get(needle.len()) == Some(&b'/'))
            })
        })
        .collect();
    matched
        .iter()
        .copied()
        .filter(|pid| parent_of(*pid).is_none_or(|ppid| !matched.contains(&ppid)))
        .collect()
}

/// The parent pid, from `/proc/PID/stat` (the field after the state, which
/// follows the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Core {
    pub(super) async fn recover(&self) -> Result<()> {
        let store = &self.inner.store;
        store.purge_keys(0, true)?;
        let mut adopted = HashSet::new();
        for row in store.vms()? {
            match self.adopt(&row).await {
                Some(vm) => {
                    adopted.insert(vm.process.pid());
                }
                None => {
                    store.delete_vm(&row.id)?;
                    let _ = std::fs::remove_dir_all(&row.run_dir);
                }
            }
        }
        // Sandboxes whose VM is gone.
        let live: HashSet<String> = self.state().sandboxes.keys().cloned().collect();
        for mut info in store.sandboxes(false)? {
            if live.contains(&info.id) {
                continue;
            }
            tracing::warn!(sandbox_id = %info.id, "its VM died while the daemon was down");
            info.state = SandboxState::Ended;
            info.end_reason = Some(EndReason::VmDied);
            info.ended_at_ms = Some(now_ms());
            info.running_execs = 0;
            store.put_sandbox(&info)?;
            self.inner.events.emit(
                crate::model::EventKind::Expired,
                Some(&info.id),
                Some(&info.template),
                Some(EndReason::VmDied),
                None,
                Some("the VM died while the daemon was down".into()),
            );
        }
        // Orphans: started from here, never recorded (the daemon died
        // between spawn and record).
        for pid in processes_under(&self.inner.vm_dir) {
            if adopted.contains(&pid) {
                continue;
            }
            if let Some(identity) = ProcessIdentity::of(pid) {
                tracing::warn!(pid, "killing an orphaned VM process");
                let dir = self.inner.vm_dir.join("orphan");
                if let Ok(p) = VmProcess::adopt(
                    identity,
                    crate::vm_process::AgentAddr::Unix(dir.clone()),
                    dir,
                ) {
                    let _ = p.kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
                }
            }
        }
        // Run directories nobody owns.
        let known: HashSet<String> = self.state().vms.keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(&self.inner.vm_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Re-adopts one recorded VM, or says it is gone (killed if alive but
    /// unusable).
    async fn adopt(&self, row: &VmRow) -> Option<Arc<Vm>> {
        let process = match VmProcess::adopt(row.identity, row.agent.clone(), row.run_dir.clone()) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(vm_id = %row.id, error = %e, "recorded VM is gone");
                return None;
            }
        };
        let vm = Arc::new(Vm {
            id: row.id.clone(),
            template: row.template.clone(),
            mem_mib: row.mem_mib,
            // Not recorded, so unknown: a re-adopted pooled VM of a registry
            // template (which may have been rebuilt meanwhile) is replaced
            // by the reconciler; built-in and configured ones have none.
            revision: None,
            process,
        });
        let sandbox = row
            .sandbox_id
            .as_deref()
            .and_then(|id| self.inner.store.sandbox(id).ok().flatten())
            .filter(|s| s.end_reason.is_none());
        let wanted = match row.phase {
            VmPhase::Booting | VmPhase::Pooled => self.has_template(&row.template),
            VmPhase::Claimed => sandbox.is_some(),
        };
        // A VM that was still booting may finish now: it gets the same
        // wait (retrying pings) as a ready one gets one ping.
        let usable = wanted
            && match row.phase {
                VmPhase::Booting => vm.process.wait_ready(ADOPT_PING).await.is_ok(),
                _ => vm.process.ping(ADOPT_PING).await.is_ok(),
            };
        if !usable {
            tracing::info!(vm_id = %row.id, phase = ?row.phase, "killing a recorded VM that cannot be re-adopted");
            self.retire(vm).await;
            return None;
        }
        let phase = match row.phase {
            VmPhase::Booting => VmPhase::Pooled,
            p => p,
        };
        if phase != row.phase {
            self.set_phase(&vm, phase, None);
        }
        // A claimed VM's sandbox gets its egress proxy back (its byte
        // budget starts over).
        let proxy = match (&phase, &sandbox) {
            (
                VmPhase::Claimed,
                Some(SandboxInfo {
                    id,
                    egress: Some(allow),
                    ..
                }),
            ) => match self.attach_egress(id, &vm, allow) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "egress proxy not re-attached");
                    None
                }
            },
            _ => None,
        };
        {
            let mut st = self.state();
            st.usage.vms += 1;
            st.usage.memory_mib += vm.mem_mib;
            st.vms.insert(
                vm.id.clone(),
                VmSlot {
                    vm: Arc::clone(&vm),
                    phase,
                },
            );
            match (phase, sandbox) {
                (VmPhase::Claimed, Some(mut info)) => {
                    // A restart counts as activity: the idle clock restarts.
                    info.last_activity_ms = now_ms();
                    info.running_execs = 0;
                    st.sandboxes.insert(
                        info.id.clone(),
                        Sandbox {
                            info,
                            vm: Arc::clone(&vm),
                            notice_sent_for: None,
                            execs: Default::default(),
                            egress: proxy,
                        },
                    );
                }
                _ => {
                    let age = Duration::from_millis(
                        now_ms().saturating_sub(row.ready_at_ms.unwrap_or_else(now_ms)),
                    );
                    let ready_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    if let Some(pool) = st.pools.get_mut(&row.template) {
                        pool.ready.push_back((ready_at, Arc::clone(&vm)));
                    }
                }
            }
        }
        tracing::info!(vm_id = %row.id, pid = vm.process.pid(), phase = ?phase, "re-adopted VM");
        self.watch_vm(&vm);
        Some(vm)
    }
}
