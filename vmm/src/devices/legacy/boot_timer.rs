//! The boot-timer pseudo device: the guest writes
//! [`BOOT_TIMER_MAGIC`](crate::layout::BOOT_TIMER_MAGIC) at offset 0 when its
//! userspace starts, and the VMM records the time since it started. Right
//! before an intended reboot the guest writes
//! [`BOOT_TIMER_SHUTDOWN_MAGIC`](crate::layout::BOOT_TIMER_SHUTDOWN_MAGIC), so
//! the reset that follows counts as a clean shutdown and not as a panic.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::layout::{BOOT_TIMER_MAGIC, BOOT_TIMER_SHUTDOWN_MAGIC};
use crate::vm::exit::ExitState;
use crate::vm::timings::BootClock;

/// The boot-timer device (MMIO, one page).
pub struct BootTimer {
    clock: Arc<BootClock>,
    exit: Arc<ExitState>,
}

impl BootTimer {
    /// A device that records into `clock` and announces shutdowns to `exit`
    /// (which from now on requires that announcement for a clean reset).
    pub fn new(clock: Arc<BootClock>, exit: Arc<ExitState>) -> Self {
        exit.require_shutdown_announcement();
        BootTimer { clock, exit }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_SHUTDOWN_MAGIC) {
            self.exit.announce_shutdown();
            return;
        }
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            if let Some(t) = self.clock.mark_userspace() {
                tracing::info!(
                    "guest userspace started {:.3} ms after vmm start",
                    t.as_secs_f64() * 1e3
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn records_only_the_magic_at_offset_zero() {
        let clock = Arc::new(BootClock::new(Instant::now()));
        let mut dev = BootTimer::new(Arc::clone(&clock), Arc::new(ExitState::new()));
        dev.write(0, &[BOOT_TIMER_MAGIC - 1]);
        dev.write(1, &[BOOT_TIMER_MAGIC]);
        dev.write(0, &[]);
        assert_eq!(clock.timings().userspace_start, None);
        dev.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        let t = clock.timings().userspace_start.unwrap();
        dev.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(clock.timings().userspace_start, Some(t), "first write wins");
        let mut buf = [0xffu8; 4];
        dev.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn shutdown_magic_makes_the_next_reset_clean() {
        use crate::vm::exit::ExitReason;
        let exit = Arc::new(ExitState::new());
        let mut dev = BootTimer::new(Arc::new(BootClock::new(Instant::now())), Arc::clone(&exit));
        dev.write(1, &[BOOT_TIMER_SHUTDOWN_MAGIC]);
        dev.write(0, &[BOOT_TIMER_SHUTDOWN_MAGIC]);
        exit.request(ExitReason::Reset);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
