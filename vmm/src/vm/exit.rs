//! Why a VM stopped, and the shared flag that stops it.
//!
//! Whoever first decides the VM is done (a vCPU thread seeing a guest reset
//! or a fatal exit, a device, or the host) records an [`ExitReason`]; later
//! reasons are ignored. vCPU threads check [`ExitState::stopping`] before
//! every entry into the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (keyboard-controller reset or a KVM reset
    /// event) after announcing its shutdown on the boot-timer device, or with
    /// no boot-timer device to announce on. kiln guests reboot to exit. A
    /// clean exit.
    Reset,
    /// The guest reset the machine without announcing a shutdown first: a
    /// kernel panic (the guest kernel runs with `panic=-1`) or a reboot from
    /// inside the guest that the agent did not ask for.
    UnexpectedReset,
    /// The guest powered off. A clean exit.
    PowerOff,
    /// The host stopped the VM ([`crate::vm::MicroVm::shutdown`] or a signal).
    Stopped,
    /// A vCPU executed HLT with nothing to wake it.
    Halted {
        /// vCPU index.
        vcpu: u8,
    },
    /// A vCPU triple-faulted.
    TripleFault {
        /// vCPU index.
        vcpu: u8,
    },
    /// The guest reported a crash through the hypervisor.
    Crashed {
        /// vCPU index.
        vcpu: u8,
    },
    /// The hypervisor could not emulate an instruction.
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// Hypervisor-specific sub-error.
        suberror: u32,
    },
    /// Entering the guest failed.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware failure reason.
        reason: u64,
    },
    /// An exit the VMM does not handle.
    UnhandledExit {
        /// vCPU index.
        vcpu: u8,
        /// Description of the exit.
        exit: String,
    },
    /// The VMM itself failed while running the vCPU.
    VcpuError {
        /// vCPU index.
        vcpu: u8,
        /// What failed.
        message: String,
    },
}

impl ExitReason {
    /// Whether the guest asked to stop (reset or power off), or the host did.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::UnexpectedReset => write!(
                f,
                "guest reset without announcing a shutdown (kernel panic or unrequested reboot; see the serial log)"
            ),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::Halted { vcpu } => write!(f, "vcpu {vcpu} halted"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "vcpu {vcpu} triple fault (guest crashed)")
            }
            ExitReason::Crashed { vcpu } => write!(f, "guest crashed (vcpu {vcpu})"),
            ExitReason::InternalError { vcpu, suberror } => {
                write!(
                    f,
                    "vcpu {vcpu} hypervisor internal error (suberror {suberror})"
                )
            }
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vcpu {vcpu} failed to enter the guest (reason {reason:#x})"
                )
            }
            ExitReason::UnhandledExit { vcpu, exit } => {
                write!(f, "vcpu {vcpu} unhandled exit {exit}")
            }
            ExitReason::VcpuError { vcpu, message } => write!(f, "vcpu {vcpu} failed: {message}"),
        }
    }
}

/// The stop flag and first exit reason, shared by vCPU threads, devices and
/// the VM handle. Lock order: this mutex is a leaf (never held while taking
/// another lock).
#[derive(Debug, Default)]
pub struct ExitState {
    stopping: AtomicBool,
    /// Resets count as clean only after the guest announced its shutdown.
    strict_reset: AtomicBool,
    shutdown_announced: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    /// The crashing vCPU's registers, when the guest crashed.
    crash_state: Mutex<Option<String>>,
    changed: Condvar,
}

impl ExitState {
    /// A running state.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on a guest reset is clean only after
    /// [`ExitState::announce_shutdown`]; otherwise it is recorded as
    /// [`ExitReason::UnexpectedReset`]. Enabled when the guest has a device to
    /// announce on (the boot timer).
    pub fn require_shutdown_announcement(&self) {
        self.strict_reset.store(true, Ordering::SeqCst);
    }

    /// The guest announced that its next reset is an intended shutdown.
    pub fn announce_shutdown(&self) {
        self.shutdown_announced.store(true, Ordering::SeqCst);
    }

    /// Keeps the registers of a vCPU whose guest crashed (the first ones
    /// recorded win), for the VMM's final error line.
    pub fn record_crash_state(&self, state: String) {
        self.crash_state
            .lock()
            .expect("exit state lock poisoned")
            .get_or_insert(state);
    }

    /// The crashing vCPU's registers, if a guest crash recorded them.
    pub fn crash_state(&self) -> Option<String> {
        self.crash_state
            .lock()
            .expect("exit state lock poisoned")
            .clone()
    }

    /// Records `reason` if none was recorded yet and asks every vCPU to stop.
    /// Returns whether this call recorded the reason.
    pub fn request(&self, reason: ExitReason) -> bool {
        let reason = match reason {
            ExitReason::Reset
                if self.strict_reset.load(Ordering::SeqCst)
                    && !self.shutdown_announced.load(Ordering::SeqCst) =>
            {
                ExitReason::UnexpectedReset
            }
            other => other,
        };
        let mut slot = self.reason.lock().expect("exit state lock poisoned");
        self.stopping.store(true, Ordering::SeqCst);
        let first = slot.is_none();
        if first {
            *slot = Some(reason);
            self.changed.notify_all();
        }
        first
    }

    /// Whether the VM is stopping; vCPUs must not re-enter the guest.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .expect("exit state lock poisoned")
            .clone()
    }

    /// Blocks until a reason is recorded, or `timeout` passes (`None`: forever).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let guard = self.reason.lock().expect("exit state lock poisoned");
        let guard = match timeout {
            None => self
                .changed
                .wait_while(guard, |r| r.is_none())
                .expect("exit state lock poisoned"),
            Some(t) => {
                self.changed
                    .wait_timeout_while(guard, t, |r| r.is_none())
                    .expect("exit state lock poisoned")
                    .0
            }
        };
        guard.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reset_without_announcement_is_unexpected_when_required() {
        let lax = ExitState::new();
        lax.request(ExitReason::Reset);
        assert_eq!(lax.reason(), Some(ExitReason::Reset));

        let strict = ExitState::new();
        strict.require_shutdown_announcement();
        strict.request(ExitReason::Reset);
        assert_eq!(strict.reason(), Some(ExitReason::UnexpectedReset));

        let announced = ExitState::new();
        announced.require_shutdown_announcement();
        announced.announce_shutdown();
        announced.request(ExitReason::Reset);
        assert_eq!(announced.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn first_reason_wins_and_wakes_waiters() {
        let state = Arc::new(ExitState::new());
        assert!(!state.stopping());
        assert_eq!(state.wait(Some(Duration::from_millis(1))), None);
        let s2 = Arc::clone(&state);
        let waiter = std::thread::spawn(move || s2.wait(None));
        assert!(state.request(ExitReason::Reset));
        assert!(!state.request(ExitReason::TripleFault { vcpu: 0 }));
        assert_eq!(waiter.join().unwrap(), Some(ExitReason::Reset));
        assert!(state.stopping());
        assert!(ExitReason::Reset.is_clean());
        assert!(!ExitReason::UnexpectedReset.is_clean());
        assert!(!ExitReason::TripleFault { vcpu: 1 }.is_clean());
        assert_eq!(
            ExitReason::TripleFault { vcpu: 1 }.to_string(),
            "vcpu 1 triple fault (guest crashed)"
        );
    }
}
