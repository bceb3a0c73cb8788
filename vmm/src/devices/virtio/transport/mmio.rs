//! virtio-mmio transport, version 2 ("modern", virtio 1.x).
//!
//! One 4 KiB window per device: 32-bit registers below [`CONFIG_OFFSET`], the
//! device's configuration space from there. The driver walks the status state
//! machine ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK; the transport
//! refuses out-of-order steps, feature sets the device did not offer, and
//! queue setup outside the FEATURES_OK..DRIVER_OK window. On DRIVER_OK it
//! validates every ready queue against guest memory and activates the device;
//! if that fails the device reports DEVICE_NEEDS_RESET instead of DRIVER_OK.
//!
//! Queue notifications normally never reach this code: the manager registers
//! one ioeventfd per queue at [`QUEUE_NOTIFY`] (datamatch = queue index). A
//! notify write that does exit to the VMM signals the same eventfd.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::{
    warn_limited, ActivateContext, Interrupt, VirtioDevice, VirtioError, STATUS_ACKNOWLEDGE,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version kiln implements.
pub const VERSION: u32 = 2;
/// Vendor ID reported to the guest ("KILN").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KILN");
/// Offset of the QueueNotify register (ioeventfd address = window base + this).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// Offset where the device configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Queue registers as the driver wrote them; validated only on DRIVER_OK.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max: u16,
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        QueueConfig {
            max,
            size: u32::from(max),
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Builds the queue, or `None` if the driver's values don't describe a
    /// valid split ring inside guest memory.
    fn build(&self, mem: &GuestMemoryMmap) -> Option<Queue> {
        let mut q = Queue::new(self.max).ok()?;
        if !self.ready {
            return Some(q);
        }
        q.try_set_size(u16::try_from(self.size).ok()?).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        let n = self.size as usize;
        // Same checks as `Queue::is_valid`, without its guest-triggered logging.
        let fits =
            |addr: u64, len: usize| GuestMemoryBackend::check_range(mem, GuestAddress(addr), len);
        if !(fits(self.desc, 16 * n) && fits(self.avail, 6 + 2 * n) && fits(self.used, 6 + 8 * n)) {
            return None;
        }
        q.set_ready(true);
        Some(q)
    }
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero feature page we don't have.
    driver_features_bogus: bool,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
}

impl MmioTransport {
    /// Wraps `device`; `mem` is what its queues will live in.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, VirtioError> {
        let (device_type, avail_features, queues, queue_evts) = {
            let dev = device.lock().expect("virtio device lock poisoned");
            let queue_evts = dev
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(VirtioError::EventFd)?;
            let queues = dev
                .queue_max_sizes()
                .iter()
                .map(|&m| QueueConfig::new(m))
                .collect();
            (dev.device_type(), dev.avail_features(), queues, queue_evts)
        };
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queue_evts,
            device_type,
            avail_features,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_bogus: false,
            queue_sel: 0,
            queues,
        })
    }

    /// The interrupt line; register `interrupt().eventfd()` as an irqfd.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// One eventfd per queue; register each as an ioeventfd at
    /// `base + QUEUE_NOTIFY` with datamatch = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// Device status as the driver sees it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    fn dev(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().expect("virtio device lock poisoned")
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers are writable only between FEATURES_OK and DRIVER_OK,
    /// and a queue's layout only while it is not ready.
    fn queue_setup_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0
            && !self.interrupt.needs_reset()
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max)),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length reads as all ones.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status != STATUS_ACKNOWLEDGE | STATUS_DRIVER {
                    warn_limited!(
                        "virtio-mmio: driver features written in status {:#x}",
                        self.status
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => self.driver_features_bogus |= v != 0,
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW..=REG_QUEUE_USED_HIGH => {
                self.write_queue_reg(offset, v)
            }
            QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        warn_limited!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
                None => warn_limited!("virtio-mmio: notify for missing queue {v}"),
            },
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            _ => warn_limited!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_setup_allowed() {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            warn_limited!("virtio-mmio: queue register {offset:#x} written for a missing queue");
            return;
        };
        let set_low = |r: &mut u64| *r = (*r & !0xffff_ffff) | u64::from(v);
        let set_high = |r: &mut u64| *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
        if offset == REG_QUEUE_READY {
            q.ready = v == 1;
            return;
        }
        if q.ready {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written while the queue is ready"
            );
            return;
        }
        match offset {
            // Kept as written: a bad size fails activation rather than being
            // silently replaced by one the driver doesn't know about.
            REG_QUEUE_NUM => q.size = v,
            REG_QUEUE_DESC_LOW => set_low(&mut q.desc),
            REG_QUEUE_DESC_HIGH => set_high(&mut q.desc),
            REG_QUEUE_AVAIL_LOW => set_low(&mut q.avail),
            REG_QUEUE_AVAIL_HIGH => set_high(&mut q.avail),
            REG_QUEUE_USED_LOW => set_low(&mut q.used),
            REG_QUEUE_USED_HIGH => set_high(&mut q.used),
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            if self.status & STATUS_DRIVER_OK != 0 {
                // Legitimate (driver unbind, kexec) but rare: it drops every
                // request in flight, so say so.
                tracing::info!(
                    "virtio-mmio: the guest reset device type {} while it was running",
                    self.dev().device_type()
                );
            }
            self.reset();
            return;
        }
        let v = v & !STATUS_NEEDS_RESET;
        if self.status & STATUS_FAILED != 0 {
            warn_limited!("virtio-mmio: status write {v:#x} after FAILED ignored until reset");
            return;
        }
        if v & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        // The driver only ever adds one bit at a time; bits never go away
        // except through a reset.
        if v & self.status != self.status {
            warn_limited!(
                "virtio-mmio: status {:#x} -> {v:#x} clears bits",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        const AD: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        match (self.status, new) {
            (0, STATUS_ACKNOWLEDGE) | (STATUS_ACKNOWLEDGE, STATUS_DRIVER) => self.status = v,
            (AD, STATUS_FEATURES_OK) => {
                let unoffered = self.driver_features & !self.avail_features;
                let modern = self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
                if unoffered == 0 && modern && !self.driver_features_bogus {
                    self.status = v;
                } else {
                    warn_limited!(
                        "virtio-mmio: refusing driver features {:#x} (offered {:#x})",
                        self.driver_features,
                        self.avail_features
                    );
                }
            }
            (s, STATUS_DRIVER_OK) if s == AD | STATUS_FEATURES_OK => {
                if self.interrupt.needs_reset() {
                    return;
                }
                if self.activate() {
                    self.status = v;
                } else {
                    self.interrupt.signal_needs_reset();
                }
            }
            _ => warn_limited!(
                "virtio-mmio: invalid status transition {:#x} -> {v:#x}",
                self.status
            ),
        }
    }

    fn activate(&mut self) -> bool {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            match cfg.build(&self.mem) {
                Some(q) => queues.push(q),
                None => {
                    warn_limited!("virtio-mmio: queue {i} is invalid, device not activated");
                    return false;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.dev().activate(ctx) {
            Ok(()) => true,
            Err(e) => {
                warn_limited!("virtio-mmio: device activation failed: {e}");
                false
            }
        }
    }

    fn reset(&mut self) {
        self.dev().reset();
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_bogus = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.dev().read_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) && self.status & STATUS_FAILED == 0 {
                self.dev().write_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_limited!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn_limited!("virtio-mmio: unaligned write at {offset:#x} ignored");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod hostile;
mod state;

pub use state::{QueueSnapshot, RestoreError, TransportState};

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use event_manager::{EventOps, Events, MutEventSubscriber};

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};
    use crate::devices::virtio::{ActivateError, DeviceState, INT_VRING};

    const FEATURE_X: u64 = 1 << 3;

    struct Dummy {
        state: DeviceState,
        config: [u8; 8],
        activations: usize,
        resets: usize,
        queues: Vec<Queue>,
    }

    impl MutEventSubscriber for Dummy {
        fn process(&mut self, _: Events, _: &mut EventOps) {}
        fn init(&mut self, _: &mut EventOps) {}
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | FEATURE_X
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::devices::virtio::read_config_bytes(&self.config, offset, data)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let off = offset as usize;
            if let Some(dst) = self.config.get_mut(off..off + data.len()) {
                dst.copy_from_slice(data);
            }
        }
        fn state(&self) -> &DeviceState {
            &self.state
        }
        fn state_mut(&mut self) -> &mut DeviceState {
            &mut self.state
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            // Keeps the queues to look at; only the eventfds are shared.
            self.activations += 1;
            self.queues = ctx.queues;
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.queues.clear();
        }
    }

    struct Fixture {
        t: MmioTransport,
        dev: Arc<Mutex<Dummy>>,
        mem: GuestMemoryMmap,
    }

    fn fixture() -> Fixture {
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(Dummy {
            state: DeviceState::new("dummy", 2).unwrap(),
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            activations: 0,
            resets: 0,
            queues: Vec::new(),
        }));
        let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
        Fixture { t, dev, mem }
    }

    pub(super) fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub(super) fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    pub(super) fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    pub(super) fn setup_queue(
        t: &mut MmioTransport,
        mem: &GuestMemoryMmap,
        idx: u32,
        base: u64,
        size: u16,
    ) {
        let tq = TestQueue::new(mem, base, size);
        w(t, REG_QUEUE_SEL, idx);
        w(t, REG_QUEUE_NUM, u32::from(size));
        for (low, addr) in [
            (REG_QUEUE_DESC_LOW, tq.desc),
            (REG_QUEUE_AVAIL_LOW, tq.avail),
            (REG_QUEUE_USED_LOW, tq.used),
        ] {
            w(t, low, addr as u32);
            w(t, low + 4, (addr >> 32) as u32);
        }
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    const MODERN: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identification_registers() {
        let mut f = fixture();
        assert_eq!(r(&mut f.t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(r(&mut f.t, REG_VERSION), 2);
        assert_eq!(r(&mut f.t, REG_DEVICE_ID), 42);
        assert_eq!(r(&mut f.t, REG_VENDOR_ID), VENDOR_ID);
        w(&mut f.t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 1);
        w(&mut f.t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), FEATURE_X as u32);
        w(&mut f.t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 0);
        assert_eq!(r(&mut f.t, REG_SHM_LEN_LOW), u32::MAX);
        // Writes to read-only registers change nothing.
        w(&mut f.t, REG_MAGIC, 0);
        assert_eq!(r(&mut f.t, REG_MAGIC), MAGIC_VALUE);
    }

    #[test]
    fn wrong_width_and_unaligned_register_access_is_ignored() {
        let mut f = fixture();
        let mut b2 = [0xffu8; 2];
        f.t.read(REG_MAGIC, &mut b2);
        assert_eq!(b2, [0, 0]);
        let mut b8 = [0xffu8; 8];
        f.t.read(REG_MAGIC, &mut b8);
        assert_eq!(b8, [0; 8]);
        let mut b4 = [0xffu8; 4];
        f.t.read(REG_MAGIC + 1, &mut b4);
        assert_eq!(b4, [0; 4]);
        // A 1-byte or unaligned status write does not start negotiation.
        f.t.write(REG_STATUS, &[STATUS_ACKNOWLEDGE as u8]);
        f.t.write(REG_STATUS + 2, &STATUS_ACKNOWLEDGE.to_le_bytes());
        f.t.write(REG_STATUS, &[]);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
        // Config space accepts narrow accesses, but not odd widths.
        let mut b1 = [0u8; 1];
        f.t.read(CONFIG_OFFSET + 2, &mut b1);
        assert_eq!(b1, [3]);
        let mut b3 = [0xffu8; 3];
        f.t.read(CONFIG_OFFSET, &mut b3);
        assert_eq!(b3, [0; 3]);
        let mut far = [0xffu8; 4];
        f.t.read(0xffc, &mut far);
        assert_eq!(far, [0; 4]);
        f.t.write(CONFIG_OFFSET + 1, &[9, 9]);
        assert_eq!(f.dev.lock().unwrap().config[..4], [1, 9, 9, 4]);
    }

    #[test]
    fn full_negotiation_activates_with_valid_queues() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN | FEATURE_X);
        assert_eq!(r(&mut f.t, REG_STATUS), ALL & !STATUS_DRIVER_OK);
        w(&mut f.t, REG_QUEUE_SEL, 0);
        assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 16);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
        setup_queue(&mut f.t, &f.mem.clone(), 0, 0x1000, 16);
        setup_queue(&mut f.t, &f.mem.clone(), 1, 0x2000, 4);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 1);
        w(&mut f.t, REG_STATUS, ALL);
        assert_eq!(r(&mut f.t, REG_STATUS), ALL);
        let dev = f.dev.lock().unwrap();
        assert_eq!(dev.activations, 1);
        assert_eq!(dev.queues.len(), 2);
        assert_eq!(dev.queues[1].size(), 4);
        assert!(dev.queues.iter().all(|q| q.ready()));
    }

    #[test]
    fn features_ok_refused_for_unoffered_or_legacy_features() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN | (1 << 5));
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut f.t, REG_STATUS, 0);
        // Without VIRTIO_F_VERSION_1 (a legacy driver).
        negotiate(&mut f.t, FEATURE_X);
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut f.t, REG_STATUS, 0);
        // A non-zero write to a feature page that doesn't exist.
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut f.t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut f.t, REG_DRIVER_FEATURES, 1);
        w(&mut f.t, REG_DRIVER_FEATURES_SEL, 2);
        w(&mut f.t, REG_DRIVER_FEATURES, 1);
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }

    #[test]
    fn out_of_order_status_is_ignored() {
        let mut f = fixture();
        // DRIVER_OK straight away, and skipping steps.
        w(&mut f.t, REG_STATUS, ALL);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE);
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // DRIVER_OK before FEATURES_OK.
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Clearing a bit without a reset.
        w(&mut f.t, REG_STATUS, STATUS_DRIVER);
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Queue setup before FEATURES_OK is ignored.
        w(&mut f.t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
        // Features can't change after FEATURES_OK.
        w(&mut f.t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut f.t, REG_DRIVER_FEATURES, 1);
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(&mut f.t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut f.t, REG_DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(f.t.driver_features, MODERN);
        assert_eq!(f.dev.lock().unwrap().activations, 0);
    }

    #[test]
    fn queue_select_out_of_range() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN);
        w(&mut f.t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 0);
        w(&mut f.t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
        w(&mut f.t, REG_QUEUE_SEL, u32::MAX);
        w(&mut f.t, REG_QUEUE_NUM, 8);
        assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 0);
        // Notify for a queue that doesn't exist is dropped; a real one fires.
        w(&mut f.t, QUEUE_NOTIFY, 9);
        w(&mut f.t, QUEUE_NOTIFY, 1);
        let dev = f.dev.lock().unwrap();
        assert!(dev.queue_events()[0].read().is_err());
        assert_eq!(dev.queue_events()[1].read().unwrap(), 1);
    }

    fn bad_size_fails_activation(size: u32) {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN);
        let mem = f.mem.clone();
        setup_queue(&mut f.t, &mem, 0, 0x1000, 16);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 8);
        w(&mut f.t, REG_QUEUE_READY, 0);
        w(&mut f.t, REG_QUEUE_NUM, size);
        w(&mut f.t, REG_QUEUE_READY, 1);
        w(&mut f.t, REG_STATUS, ALL);
        assert_eq!(
            r(&mut f.t, REG_STATUS),
            (ALL & !STATUS_DRIVER_OK) | STATUS_NEEDS_RESET,
            "size {size}"
        );
        assert_eq!(f.dev.lock().unwrap().activations, 0);
        // Further queue writes and DRIVER_OK are refused until reset.
        w(&mut f.t, REG_STATUS, ALL);
        assert_eq!(f.dev.lock().unwrap().activations, 0);
        w(&mut f.t, REG_STATUS, 0);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
    }

    #[test]
    fn queue_size_too_big_zero_or_not_power_of_two() {
        for size in [16, 6, 0, 0x1_0000 + 8] {
            bad_size_fails_activation(size);
        }
    }

    #[test]
    fn queue_outside_guest_memory_fails_activation() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN);
        let mem = f.mem.clone();
        setup_queue(&mut f.t, &mem, 0, 0x1000, 16);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 8);
        w(&mut f.t, REG_QUEUE_READY, 0);
        w(&mut f.t, REG_QUEUE_USED_HIGH, 1); // used ring above 4 GiB: not guest RAM
        w(&mut f.t, REG_QUEUE_READY, 1);
        w(&mut f.t, REG_STATUS, ALL);
        assert_ne!(r(&mut f.t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(f.dev.lock().unwrap().activations, 0);
        // Misaligned descriptor table.
        let mut f = fixture();
        negotiate(&mut f.t, MODERN);
        setup_queue(&mut f.t, &mem, 0, 0x1008, 16);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 8);
        w(&mut f.t, REG_STATUS, ALL);
        assert_ne!(r(&mut f.t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_layout_frozen_while_ready_and_after_driver_ok() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN);
        let mem = f.mem.clone();
        setup_queue(&mut f.t, &mem, 0, 0x1000, 16);
        w(&mut f.t, REG_QUEUE_DESC_LOW, 0x5000);
        assert_eq!(f.t.queues[0].desc, 0x1000);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 8);
        w(&mut f.t, REG_STATUS, ALL);
        w(&mut f.t, REG_QUEUE_SEL, 0);
        w(&mut f.t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 1);
    }

    #[test]
    fn writes_after_failed_are_ignored_until_reset() {
        let mut f = fixture();
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FAILED);
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_FAILED);
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED,
        );
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_FAILED);
        f.t.write(CONFIG_OFFSET, &[0xaa]);
        assert_eq!(f.dev.lock().unwrap().config[0], 1);
        w(&mut f.t, REG_STATUS, 0);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
        negotiate(&mut f.t, MODERN);
        assert_eq!(r(&mut f.t, REG_STATUS), ALL & !STATUS_DRIVER_OK);
    }

    #[test]
    fn reset_clears_everything() {
        let mut f = fixture();
        negotiate(&mut f.t, MODERN | FEATURE_X);
        let mem = f.mem.clone();
        setup_queue(&mut f.t, &mem, 0, 0x1000, 16);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 4);
        w(&mut f.t, REG_STATUS, ALL);
        f.t.interrupt().trigger(INT_VRING);
        assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), INT_VRING);
        w(&mut f.t, REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), 0);
        f.t.interrupt().trigger(INT_VRING);
        w(&mut f.t, REG_STATUS, 0);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
        assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), 0);
        assert_eq!(f.t.driver_features, 0);
        assert_eq!(f.t.queue_sel, 0);
        w(&mut f.t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
        assert_eq!(f.t.queues[1].size, 8);
        assert_eq!(f.t.queues[1].desc, 0);
        let dev = f.dev.lock().unwrap();
        assert_eq!(dev.resets, 1);
        assert!(dev.queues.is_empty());
        drop(dev);
        // And it can be driven again.
        negotiate(&mut f.t, MODERN);
        setup_queue(&mut f.t, &mem, 0, 0x1000, 16);
        setup_queue(&mut f.t, &mem, 1, 0x2000, 8);
        w(&mut f.t, REG_STATUS, ALL);
        assert_eq!(r(&mut f.t, REG_STATUS), ALL);
        assert_eq!(f.dev.lock().unwrap().activations, 2);
    }
}
