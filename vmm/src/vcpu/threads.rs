//! Starting vCPU threads and stopping them.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::kick;
use super::run_loop::{self, VcpuContext};
use crate::seccomp::{self, ThreadFilters, ThreadKind};
use crate::vm::exit::ExitReason;

/// How often a stopping vCPU thread is signalled until it returns.
const KICK_INTERVAL: Duration = Duration::from_millis(2);
/// How long a vCPU thread may take to return after the first kick.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running vCPU threads of one VM.
#[derive(Default)]
pub struct VcpuThreads {
    handles: Mutex<Vec<(u8, JoinHandle<Option<()>>)>>,
}

impl VcpuThreads {
    /// Spawns one thread per context; with `filters`, each installs the
    /// vCPU seccomp filter before it enters the guest. On error the
    /// already-started threads remain registered; stop them with
    /// [`VcpuThreads::stop`].
    pub fn spawn(
        &self,
        contexts: Vec<VcpuContext>,
        filters: Option<Arc<ThreadFilters>>,
    ) -> std::io::Result<()> {
        kick::install_handler()?;
        for ctx in contexts {
            let id = ctx.id;
            let exit = Arc::clone(&ctx.exit);
            let handle = seccomp::spawn_filtered(
                format!("kiln-vcpu{id}"),
                ThreadKind::Vcpu,
                filters.clone(),
                move || {
                    let guard = PanicGuard { exit, id };
                    run_loop::run(ctx);
                    std::mem::forget(guard);
                },
            )
            .map_err(std::io::Error::other)?;
            self.handles
                .lock()
                .expect("vcpu thread list poisoned")
                .push((id, handle));
        }
        Ok(())
    }

    /// Kicks vCPU `id`'s thread out of the guest once (no-op if it is gone).
    pub fn kick(&self, id: u8) {
        let handles = self.handles.lock().expect("vcpu thread list poisoned");
        for (_, handle) in handles.iter().filter(|(i, _)| *i == id) {
            if !handle.is_finished() {
                // Not joined (it is in the list), so its pthread id is valid.
                let _ = kick::kick(handle.as_pthread_t());
            }
        }
    }

    /// Kicks every thread out of the guest until it returns, then joins it.
    /// The caller must have set the stop flag first. Idempotent. Returns the
    /// ids of threads that did not stop within [`STOP_TIMEOUT`] (left running).
    pub fn stop(&self) -> Vec<u8> {
        let handles = std::mem::take(&mut *self.handles.lock().expect("vcpu thread list poisoned"));
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut stuck = Vec::new();
        for (id, handle) in handles {
            while !handle.is_finished() && Instant::now() < deadline {
                // The thread is not joined yet, so its pthread id is valid.
                let _ = kick::kick(handle.as_pthread_t());
                std::thread::sleep(KICK_INTERVAL);
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::error!("vcpu {id} did not stop within {STOP_TIMEOUT:?}");
                stuck.push(id);
            }
        }
        stuck
    }
}

/// Records a failure if the vCPU thread unwinds (debug builds; release
/// builds abort on panic).
struct PanicGuard {
    exit: Arc<crate::vm::exit::ExitState>,
    id: u8,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        self.exit.request(ExitReason::VcpuError {
            vcpu: self.id,
            message: "vcpu thread panicked".into(),
        });
    }
}
