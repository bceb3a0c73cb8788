//! Boot milestones, measured from the moment the VMM started.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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

/// What `kiln-vmm --timings-json FILE` writes when the VM ends: the boot
/// milestones (microseconds from VMM start) and how the VM exited. Writer
/// (`kiln-vmm`) and readers (`kiln`, benchmarks) share this one type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingsReport {
    /// Wall-clock time of VMM start, microseconds since the Unix epoch: the
    /// anchor for callers measuring from their own spawn instant.
    pub start_unix_us: u64,
    /// VM built, microseconds from VMM start.
    pub built_us: Option<u64>,
    /// First entry into the guest kernel.
    pub kernel_entry_us: Option<u64>,
    /// Guest userspace start (the agent's boot-timer write).
    pub userspace_start_us: Option<u64>,
    /// Why the VM exited, human-readable.
    pub exit: String,
    /// Whether that exit was clean (reset, poweroff, stop signal).
    pub clean: bool,
}

fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl TimingsReport {
    /// The report for `timings`, a VMM started at `start_wall`, that ended
    /// for `exit` (`clean` when that was a clean exit).
    pub fn new(
        start_wall: std::time::SystemTime,
        timings: &Timings,
        exit: String,
        clean: bool,
    ) -> Self {
        TimingsReport {
            start_unix_us: micros(start_wall.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or(0),
            built_us: micros(timings.built),
            kernel_entry_us: micros(timings.kernel_entry),
            userspace_start_us: micros(timings.userspace_start),
            exit,
            clean,
        }
    }

    /// The milestones as durations from VMM start.
    pub fn timings(&self) -> Timings {
        Timings {
            built: self.built_us.map(Duration::from_micros),
            kernel_entry: self.kernel_entry_us.map(Duration::from_micros),
            userspace_start: self.userspace_start_us.map(Duration::from_micros),
        }
    }
}

impl Timings {
    /// Kernel boot: first guest entry to userspace start.
    pub fn kernel_boot(&self) -> Option<Duration> {
        Some(self.userspace_start?.saturating_sub(self.kernel_entry?))
    }
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

    #[test]
    fn report_round_trips_through_json() {
        let t = Timings {
            built: Some(Duration::from_micros(10)),
            kernel_entry: Some(Duration::from_micros(20)),
            userspace_start: Some(Duration::from_micros(70)),
        };
        let start = std::time::UNIX_EPOCH + Duration::from_secs(5);
        let report = TimingsReport::new(start, &t, "guest reset".into(), true);
        assert_eq!(report.start_unix_us, 5_000_000);
        let json = serde_json::to_string(&report).unwrap();
        let back: TimingsReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.timings(), t);
        assert_eq!(
            back.timings().kernel_boot(),
            Some(Duration::from_micros(50))
        );
        assert_eq!(Timings::default().kernel_boot(), None);
    }
}
