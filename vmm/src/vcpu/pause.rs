//! Parking every vCPU thread out of the guest, for a snapshot.
//!
//! The controller sets the request and kicks the threads; each vCPU thread
//! notices it between two runs, makes one more run with immediate exit so
//! KVM completes any pending port or MMIO access, saves its own state (it
//! owns its vCPU), hands it over and waits until the controller resumes it
//! or the VM stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::hypervisor::{HypervisorError, Vcpu, VcpuState};
use crate::vm::exit::ExitState;

/// How often a parked thread checks whether the VM is stopping.
const PARKED_POLL: Duration = Duration::from_millis(50);

/// Errors from pausing the vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Some vCPU did not park in time.
    #[error("vcpus {0:?} did not pause within the timeout")]
    Timeout(Vec<u8>),
    /// A vCPU could not read its own state.
    #[error("vcpu {vcpu}: cannot save its state: {source}")]
    Save {
        /// vCPU index.
        vcpu: u8,
        /// Underlying error.
        #[source]
        source: HypervisorError,
    },
    /// The VM stopped while pausing.
    #[error("the vm stopped while its vcpus were pausing")]
    Stopped,
    /// A pause is already in progress.
    #[error("the vcpus are already paused")]
    AlreadyPaused,
}

/// What one vCPU handed over when it parked.
type Parked = Option<Result<VcpuState, HypervisorError>>;

struct Inner {
    paused: bool,
    parked: Vec<Parked>,
    /// Bumped on every resume, so a thread knows its pause is over.
    generation: u64,
}

/// The pause request shared by the controller and the vCPU threads.
pub struct PauseCtl {
    requested: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl PauseCtl {
    /// A controller for `count` vCPUs, none paused.
    pub fn new(count: u8) -> Self {
        PauseCtl {
            requested: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                paused: false,
                parked: (0..count).map(|_| None).collect(),
                generation: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("vcpu pause lock poisoned")
    }

    /// Whether vCPU threads should park (cheap; checked after every exit).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks every vCPU to park; `kick` is called for each vCPU that has not
    /// parked yet, every few milliseconds, until all have or `timeout`
    /// passes. Returns each vCPU's state, in id order. On error the vCPUs
    /// are resumed.
    pub fn pause(
        &self,
        exit: &ExitState,
        timeout: Duration,
        mut kick: impl FnMut(u8),
    ) -> Result<Vec<VcpuState>, PauseError> {
        {
            let mut inner = self.lock();
            if inner.paused {
                return Err(PauseError::AlreadyPaused);
            }
            inner.paused = true;
            inner.parked.iter_mut().for_each(|p| *p = None);
        }
        self.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            let missing: Vec<u8> = (0..inner.parked.len())
                .filter(|&i| inner.parked[i].is_none())
                .map(|i| i as u8)
                .collect();
            if missing.is_empty() {
                break;
            }
            if exit.stopping() {
                drop(inner);
                self.resume();
                return Err(PauseError::Stopped);
            }
            if Instant::now() >= deadline {
                drop(inner);
                self.resume();
                return Err(PauseError::Timeout(missing));
            }
            drop(inner);
            missing.iter().for_each(|&id| kick(id));
            inner = self.lock();
            inner = self
                .changed
                .wait_timeout(inner, Duration::from_millis(2))
                .expect("vcpu pause lock poisoned")
                .0;
        }
        let parked = std::mem::take(&mut inner.parked);
        inner.parked = (0..parked.len()).map(|_| None).collect();
        drop(inner);
        let mut states = Vec::with_capacity(parked.len());
        for (id, p) in parked.into_iter().enumerate() {
            match p.expect("every vcpu parked") {
                Ok(state) => states.push(state),
                Err(source) => {
                    self.resume();
                    return Err(PauseError::Save {
                        vcpu: id as u8,
                        source,
                    });
                }
            }
        }
        Ok(states)
    }

    /// Lets every parked vCPU run again.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::SeqCst);
        let mut inner = self.lock();
        inner.paused = false;
        inner.generation += 1;
        drop(inner);
        self.changed.notify_all();
    }

    /// Called by vCPU thread `id` after a run that returned `Interrupted`
    /// while a pause is requested: saves the state, hands it over, and
    /// blocks until resumed or the VM stops.
    pub fn park(&self, id: u8, vcpu: &dyn Vcpu, exit: &ExitState) {
        let state = vcpu.save_state();
        let mut inner = self.lock();
        let generation = inner.generation;
        if let Some(slot) = inner.parked.get_mut(usize::from(id)) {
            *slot = Some(state);
        }
        self.changed.notify_all();
        while inner.generation == generation && !exit.stopping() {
            inner = self
                .changed
                .wait_timeout(inner, PARKED_POLL)
                .expect("vcpu pause lock poisoned")
                .0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn pause_times_out_when_a_vcpu_never_parks() {
        let ctl = PauseCtl::new(2);
        let exit = ExitState::new();
        let mut kicks = 0;
        let err = ctl
            .pause(&exit, Duration::from_millis(20), |_| kicks += 1)
            .err()
            .unwrap();
        assert!(matches!(err, PauseError::Timeout(ref ids) if ids == &[0, 1]));
        assert!(kicks > 0);
        // Resumed on failure: a new pause may start.
        assert!(!ctl.requested());
    }

    #[test]
    fn pause_refused_when_stopping() {
        let ctl = PauseCtl::new(1);
        let exit = ExitState::new();
        exit.request(crate::vm::exit::ExitReason::Stopped);
        let err = ctl.pause(&exit, Duration::from_secs(1), |_| {}).err();
        assert!(matches!(err, Some(PauseError::Stopped)));
    }
}
