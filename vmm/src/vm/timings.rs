//! Boot milestones, measured from the moment the VMM started.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milestones recorded while the VM boots; each is set once.
#[derive(Debug)]
pub struct BootClock {
    start: Instant,
    built: OnceLock<Duration>,
    kernel_entry: OnceLock<Duration>,
    userspace: OnceLock<Duration>,
}

impl BootClock {
    /// A clock whose zero is `start` (usually process start).
    pub fn new(start: Instant) -> Self {
        BootClock {
            start,
            built: OnceLock::new(),
            kernel_entry: OnceLock::new(),
            userspace: OnceLock::new(),
        }
    }

    /// Marks the VM as built (memory, kernel, devices ready).
    pub fn mark_built(&self) {
        let _ = self.built.set(self.start.elapsed());
    }

    /// Marks vCPU 0's first entry into the guest kernel.
    pub fn mark_kernel_entry(&self) {
        let _ = self.kernel_entry.set(self.start.elapsed());
    }

    /// Marks guest userspace start (the boot-timer write). Returns the time
    /// if this was the first mark.
    pub fn mark_userspace(&self) -> Option<Duration> {
        let now = self.start.elapsed();
        self.userspace.set(now).ok().map(|()| now)
    }

    /// A snapshot of the milestones so far.
    pub fn timings(&self) -> Timings {
        Timings {
            built: self.built.get().copied(),
            kernel_entry: self.kernel_entry.get().copied(),
            userspace_start: self.userspace.get().copied(),
        }
    }
}

/// Boot milestones, each measured from VMM start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// VM built: memory mapped, kernel loaded, devices and vCPUs ready.
    pub built: Option<Duration>,
    /// vCPU 0 entered the guest kernel for the first time.
    pub kernel_entry: Option<Duration>,
    /// Guest userspace started (wrote the boot-timer device).
    pub userspace_start: Option<Duration>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn marks_once() {
        let clock = BootClock::new(Instant::now());
        assert_eq!(clock.timings(), Timings::default());
        clock.mark_kernel_entry();
        let first = clock.mark_userspace().unwrap();
        assert_eq!(clock.mark_userspace(), None);
        let t = clock.timings();
        assert_eq!(t.userspace_start, Some(first));
        assert!(t.kernel_entry.unwrap() <= first);
        assert_eq!(t.built, None);
    }
}
