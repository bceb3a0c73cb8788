//! The interrupt line of one virtio device: an irqfd and the virtio-mmio
//! InterruptStatus bits, written once for every device and the transport.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{warn_limited, VirtioError, INT_CONFIG};

/// The interrupt line of one device: an irqfd plus the virtio-mmio
/// InterruptStatus bits, shared by the transport (which reads and acks the
/// bits) and the device (which raises them).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl Interrupt {
    /// A new, quiet interrupt line.
    pub fn new() -> Result<Self, VirtioError> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
        })
    }

    /// The eventfd to register as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Sets `bits` in InterruptStatus and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            warn_limited!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// Marks the device as broken (DEVICE_NEEDS_RESET) and tells the driver.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(INT_CONFIG);
    }

    /// Current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Loads a snapshot's InterruptStatus bits and reset request, and
    /// raises the interrupt again if bits are pending.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        if status != 0 {
            if let Err(e) = self.evt.write(1) {
                warn_limited!("virtio: cannot raise interrupt: {e}");
            }
        }
    }

    /// Clears all state (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::INT_VRING;

    #[test]
    fn interrupt_bits_and_ack() {
        let irq = Interrupt::new().unwrap();
        irq.trigger(INT_VRING);
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        irq.signal_needs_reset();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert!(irq.needs_reset());
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        irq.reset();
        assert_eq!(irq.status(), 0);
        assert!(!irq.needs_reset());
    }
}
