//! Virtio devices over the virtio-mmio transport.
//!
//! - [`transport::mmio`]: the virtio-mmio (version 2) register window a guest
//!   driver programs; it owns feature negotiation and queue setup and hands
//!   ready queues to a device on DRIVER_OK.
//! - [`device_state`]: what every device shares, written once (activation,
//!   reset, queue eventfds, draining a queue, the broken flag, its part of a
//!   snapshot); `interrupt.rs` the interrupt line, `queue.rs` safe popping.
//! - one folder per device ([`blk`], [`rng`], [`vsock`]) with the same file roles:
//!   `device.rs` (what is the device's own, on top of its [`DeviceState`]),
//!   `event_handler.rs` (event loop side), parsers for guest data, `mod.rs`
//!   (constants, error enum).
//! - [`manager`]: places devices on the MMIO bus (irqfd + ioeventfds) and runs
//!   their event handling on one dedicated thread.
//!
//! Threads and locks: a vCPU thread reaches a device through the bus as
//! `Mutex<MmioTransport>` -> `Mutex<dyn VirtioDevice>` (always in that order);
//! the event-loop thread only ever takes the device mutex. Queue notifications
//! arrive on ioeventfds (no vCPU exit) and interrupts leave through irqfds.

pub mod blk;
pub mod device_state;
mod interrupt;
pub mod manager;
mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use event_manager::MutEventSubscriber;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use device_state::{
    DeviceOwnState, DeviceState, DeviceStateSnapshot, QueuePosition, Served, StateEvent,
};
pub use interrupt::Interrupt;
pub use manager::{DumpTrigger, EventLoop, GateGuard, LoopGate, VirtioDevices};
pub use queue::QueueBroken;
pub(crate) use queue::{describe_queue, pop_chain};

/// Device type of a virtio block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of a virtio entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device type of a virtio socket device.
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit: the device complies with virtio 1.0+ (mandatory for mmio v2).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest knows how to drive the device.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: the driver is set up and ready to drive the device.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 0x40;
/// Device status: the guest gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Descriptor flag: the buffer continues in the `next` descriptor.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Errors from setting up virtio devices and their event loop.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// An eventfd could not be created or cloned.
    #[error("cannot create eventfd")]
    EventFd(#[source] std::io::Error),
    /// The device window index is beyond the MMIO window or the IRQ range.
    #[error("virtio device index {0} is out of range")]
    InvalidIndex(usize),
    /// The device window could not be placed on the bus.
    #[error("cannot place virtio device on the bus")]
    Bus(#[from] crate::devices::bus::BusError),
    /// The hypervisor refused an irqfd or ioeventfd.
    #[error("cannot wire virtio device interrupts")]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
    /// The event manager failed.
    #[error("virtio event loop failed: {0}")]
    EventManager(event_manager::Error),
    /// The event-loop thread could not be spawned.
    #[error("cannot spawn the virtio event-loop thread")]
    Thread(#[source] std::io::Error),
    /// The event-loop thread panicked.
    #[error("the virtio event-loop thread panicked")]
    ThreadPanicked,
}

/// Why a device refused to start on DRIVER_OK.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device drives.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The device is already running.
    #[error("device already activated")]
    AlreadyActive,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// One configured, validated queue per entry of `queue_max_sizes()`.
    pub queues: Vec<Queue>,
    /// Interrupt line shared with the transport.
    pub interrupt: std::sync::Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind a transport.
///
/// The event-loop side comes from [`MutEventSubscriber`]: `init` registers the
/// device's fds (its [`DeviceState`]'s eventfds, backend fds) and `process`
/// handles them. What every device shares (activation, reset, queue
/// notifications, draining queues, the snapshot of its queues) is its
/// [`DeviceState`]; the defaults here delegate to it.
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// Virtio device type ([`TYPE_RNG`], [`TYPE_VSOCK`], ...).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue (powers of two); the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The state every virtio device shares.
    fn state(&self) -> &DeviceState;
    /// The state every virtio device shares, to change it.
    fn state_mut(&mut self) -> &mut DeviceState;
    /// One eventfd per queue, signalled when the guest notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        self.state().queue_events()
    }
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.state_mut().activate(ctx)
    }
    /// Stops the device and drops all guest-visible state (device reset).
    fn reset(&mut self) {
        self.state_mut().reset();
    }
    /// Before a snapshot (vCPUs paused): drop what cannot be saved (vsock
    /// closes its host connections).
    fn prepare_snapshot(&mut self) {}
    /// After a snapshot is taken (the source resumes) or restored (the
    /// clone starts): tell the guest what it must redo (vsock sends a
    /// transport reset so the guest drops its connections).
    fn after_snapshot(&mut self) {}
    /// The device's own state for a snapshot, beyond [`DeviceState`]'s.
    fn save_own(&self) -> Option<DeviceOwnState> {
        None
    }
    /// Takes back what [`VirtioDevice::save_own`] saved; `false` when
    /// `state` is not this kind of device's.
    fn restore_own(&mut self, state: &DeviceOwnState) -> bool {
        let _ = state;
        false
    }
    /// The device's state for a debug dump (`kiln-vmm` logs it on
    /// SIGUSR1): queues as both sides see them, pending work, backends.
    fn describe(&self) -> String {
        format!(
            "device type {}: {}",
            self.device_type(),
            self.state().describe(&[])
        )
    }
}

/// Reads `data.len()` bytes of a byte-array configuration space at `offset`;
/// out-of-range bytes read as zero.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// A log budget for paths a guest can trigger: at most [`LogLimit::BURST`]
/// messages per second per call site.
pub struct LogLimit {
    second: AtomicU64,
    count: AtomicU32,
}

impl LogLimit {
    /// Messages allowed per second.
    pub const BURST: u32 = 10;

    /// A fresh budget.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        LogLimit {
            second: AtomicU64::new(u64::MAX),
            count: AtomicU32::new(0),
        }
    }

    /// Whether one more message may be logged now.
    pub fn allow(&self) -> bool {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::BURST
    }
}

/// `tracing::warn!` with a per-call-site [`LogLimit`].
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::devices::virtio::LogLimit = $crate::devices::virtio::LogLimit::new();
        if LIMIT.allow() {
            tracing::warn!($($arg)*);
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
pub(crate) mod test_logs;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test-only helpers
pub(crate) mod test_utils {
    //! Guest memory and a minimal guest driver for device tests.

    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    /// 16 MiB of guest memory at 0.
    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("test memory")
    }

    /// A split queue laid out at `base` that a test drives like a guest driver.
    pub struct TestQueue {
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub size: u16,
        next_desc: u16,
        used_seen: u16,
    }

    impl TestQueue {
        pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            for addr in [avail, avail + 2, used, used + 2] {
                mem.write_obj(0u16, GuestAddress(addr)).expect("ring");
            }
            TestQueue {
                desc,
                avail,
                used,
                size,
                next_desc: 0,
                used_seen: 0,
            }
        }

        /// A ready `Queue` over this layout.
        pub fn queue(&self) -> Queue {
            let mut q = Queue::new(self.size).expect("queue");
            q.try_set_desc_table_address(GuestAddress(self.desc))
                .expect("desc");
            q.try_set_avail_ring_address(GuestAddress(self.avail))
                .expect("avail");
            q.try_set_used_ring_address(GuestAddress(self.used))
                .expect("used");
            q.set_ready(true);
            q
        }

        /// Publishes a chain of `(addr, len, writable)` buffers; returns its head.
        pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
                let idx = (self.next_desc + i as u16) % self.size;
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                let next = (idx + 1) % self.size;
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                let d = GuestAddress(self.desc + 16 * u64::from(idx));
                mem.write_obj(addr, d).expect("desc addr");
                mem.write_obj(len, d.unchecked_add(8)).expect("desc len");
                mem.write_obj(flags, d.unchecked_add(12))
                    .expect("desc flags");
                mem.write_obj(next, d.unchecked_add(14)).expect("desc next");
            }
            self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
            self.publish(mem, head);
            head
        }

        /// The head index the next [`TestQueue::add_chain`] will use (chains
        /// take descriptors in order), so a buffer's address can follow it.
        pub fn next_head(&self) -> u16 {
            self.next_desc
        }

        /// Puts `head` on the available ring.
        pub fn publish(&self, mem: &GuestMemoryMmap, head: u16) {
            let idx: u16 = mem.read_obj(GuestAddress(self.avail + 2)).expect("idx");
            let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
            mem.write_obj(head, GuestAddress(slot)).expect("slot");
            mem.write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
                .expect("idx");
        }

        /// Sets the available index directly (for hostile tests).
        pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
            mem.write_obj(idx, GuestAddress(self.avail + 2))
                .expect("idx");
        }

        /// New used elements `(head, len)` since the last call.
        pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("idx");
            let mut out = Vec::new();
            while self.used_seen != idx {
                let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
                let id: u32 = mem.read_obj(GuestAddress(e)).expect("id");
                let len: u32 = mem.read_obj(GuestAddress(e + 4)).expect("len");
                out.push((id as u16, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn log_limit_caps_a_burst() {
        let l = LogLimit::new();
        let allowed = (0..100).filter(|_| l.allow()).count();
        // A second boundary may fall inside the loop; never more than two bursts.
        assert!((LogLimit::BURST as usize..=2 * LogLimit::BURST as usize).contains(&allowed));
    }

    #[test]
    fn config_bytes_bounds() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
