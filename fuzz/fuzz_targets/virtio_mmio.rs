//! The virtio-mmio register interface in front of a real device (rng or
//! vsock), with guest memory and the device's event-loop side.
//!
//! Input: `[device][op: 8 bytes]...`. `device` picks rng (even) or vsock
//! (odd). Each op is `[kind][a: u16][b][value: u32]`:
//! - 0: read `WIDTHS[b]` bytes at offset `a % 0x180` (registers, then config
//!   space);
//! - 1: write `value` there;
//! - 2: write `value` to guest memory at `(a * 4) % MEM_SIZE` (descriptors,
//!   rings, buffers are all fuzz data);
//! - 3: a well-behaved driver's init (features, every queue at a fixed
//!   layout of size [`QSIZE`], DRIVER_OK), from whatever state we are in;
//! - 4: publish head `value` on queue `b` (avail ring slot, then idx + 1);
//! - 5: notify queue `value` through QueueNotify and run the event loop.
//!
//! Invariants checked after every op: identification registers never
//! change; the status bits form a prefix of the init sequence; bits only
//! appear through the state machine and disappear only on a reset (a
//! write of 0, after which status and interrupt status read 0).
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kiln_vmm::devices::bus::BusDevice;
use kiln_vmm::devices::virtio::rng::Rng;
use kiln_vmm::devices::virtio::transport::mmio::{MmioTransport, MAGIC_VALUE, QUEUE_NOTIFY};
use kiln_vmm::devices::virtio::vsock::Vsock;
use kiln_vmm::devices::virtio::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 256 * 1024;
/// Queue size the well-behaved init uses (small: the fuzzer fills rings).
const QSIZE: u16 = 16;
/// Queue `i` lives at `QUEUE_BASE * (i + 1)`: descriptors, then avail at
/// +0x100, used at +0x200.
const QUEUE_BASE: u64 = 0x1000;
const WIDTHS: [usize; 6] = [4, 1, 2, 8, 3, 0];

// virtio-mmio v2 register offsets (virtio 1.x spec, 4.2.2).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;

/// The device as an event-loop subscriber, the way the VMM's manager holds it.
struct Sub(Arc<Mutex<dyn VirtioDevice>>);

impl MutEventSubscriber for Sub {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.lock().expect("device lock").process(events, ops);
    }
    fn init(&mut self, ops: &mut EventOps) {
        self.0.lock().expect("device lock").init(ops);
    }
}

struct Harness {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    events: EventManager<Box<dyn MutEventSubscriber + Send>>,
    queues: u32,
    /// The device id at creation.
    device_id: u32,
}

impl Harness {
    fn new(vsock: bool) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let dev: Arc<Mutex<dyn VirtioDevice>> = if vsock {
            let path = std::env::temp_dir().join(format!(
                "kiln-fuzz-mmio-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            Arc::new(Mutex::new(Vsock::new(3, path).expect("vsock device")))
        } else {
            Arc::new(Mutex::new(Rng::new().expect("rng device")))
        };
        let queues = dev.lock().expect("device lock").queue_max_sizes().len() as u32;
        let t = MmioTransport::new(mem.clone(), dev.clone()).expect("transport");
        let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().expect("event manager");
        events.add_subscriber(Box::new(Sub(dev)));
        let mut h = Harness {
            t,
            mem,
            events,
            queues,
            device_id: 0,
        };
        h.device_id = h.r(REG_DEVICE_ID);
        h
    }

    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    fn queue_addrs(q: u32) -> (u64, u64, u64) {
        let base = QUEUE_BASE * (u64::from(q) + 1);
        (base, base + 0x100, base + 0x200)
    }

    /// What a Linux driver does on probe (from a reset).
    fn driver_init(&mut self) {
        self.w(REG_STATUS, 0);
        self.w(REG_STATUS, STATUS_ACKNOWLEDGE);
        self.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for sel in 0..2 {
            self.w(REG_DEVICE_FEATURES_SEL, sel);
            let f = self.r(REG_DEVICE_FEATURES);
            self.w(REG_DRIVER_FEATURES_SEL, sel);
            self.w(REG_DRIVER_FEATURES, f);
        }
        let ad = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        self.w(REG_STATUS, ad | STATUS_FEATURES_OK);
        for q in 0..self.queues {
            let (desc, avail, used) = Self::queue_addrs(q);
            self.w(REG_QUEUE_SEL, q);
            self.w(REG_QUEUE_NUM, u32::from(QSIZE));
            for (reg, addr) in [
                (REG_QUEUE_DESC_LOW, desc),
                (REG_QUEUE_AVAIL_LOW, avail),
                (REG_QUEUE_USED_LOW, used),
            ] {
                self.w(reg, addr as u32);
                self.w(reg + 4, (addr >> 32) as u32);
            }
            self.w(REG_QUEUE_READY, 1);
        }
        self.w(REG_STATUS, ad | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    fn publish(&mut self, q: u32, head: u16) {
        let (_, avail, _) = Self::queue_addrs(q);
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(avail + 2))
            .expect("in memory");
        let slot = avail + 4 + 2 * u64::from(idx % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("in memory");
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .expect("in memory");
    }

    fn notify(&mut self, q: u32) {
        self.w(QUEUE_NOTIFY, q);
        for _ in 0..2 {
            self.events.run_with_timeout(0).expect("event loop turn");
        }
    }

    /// Status bits other than NEEDS_RESET.
    fn status(&mut self) -> u32 {
        self.r(REG_STATUS) & !STATUS_NEEDS_RESET
    }

    fn check(&mut self, before: u32, reset: bool) {
        assert_eq!(self.r(REG_MAGIC), MAGIC_VALUE);
        assert_eq!(self.r(REG_VERSION), 2);
        assert_eq!(self.r(REG_DEVICE_ID), self.device_id);
        let s = self.status();
        let steps = [
            STATUS_ACKNOWLEDGE,
            STATUS_DRIVER,
            STATUS_FEATURES_OK,
            STATUS_DRIVER_OK,
        ];
        // The init bits that are set form a prefix of the sequence.
        let init = s & !STATUS_FAILED;
        let n = steps.iter().take_while(|&&b| init & b != 0).count();
        let prefix: u32 = steps[..n].iter().fold(0, |a, b| a | b);
        assert_eq!(
            init, prefix,
            "status {s:#x} is not a prefix of the init sequence"
        );
        if reset {
            assert_eq!(s, 0, "status after a reset");
            assert_eq!(self.r(REG_INTERRUPT_STATUS), 0, "interrupts after a reset");
        } else {
            assert_eq!(s & before, before, "status {before:#x} -> {s:#x} lost bits");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&device, ops)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(device % 2 == 1);
    for op in ops.chunks_exact(8).take(512) {
        let a = u16::from_le_bytes([op[1], op[2]]);
        let b = op[3];
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let offset = u64::from(a) % 0x180;
        let width = WIDTHS[usize::from(b) % WIDTHS.len()];
        let before = h.status();
        let mut reset = false;
        match op[0] % 6 {
            0 => {
                let mut buf = [0u8; 8];
                h.t.read(offset, &mut buf[..width]);
            }
            1 => {
                let bytes = [value.to_le_bytes(), value.to_le_bytes()].concat();
                h.t.write(offset, &bytes[..width]);
                reset = offset == REG_STATUS && width == 4 && value == 0;
            }
            2 => {
                let addr = (u64::from(a) * 4) % MEM_SIZE as u64;
                h.mem
                    .write_obj(value, GuestAddress(addr))
                    .expect("in memory");
            }
            3 => {
                h.driver_init();
                continue;
            }
            4 => h.publish(u32::from(b) % h.queues, value as u16),
            _ => h.notify(value % (h.queues + 1)),
        }
        h.check(before, reset);
    }
});
