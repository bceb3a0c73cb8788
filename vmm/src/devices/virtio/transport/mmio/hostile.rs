//! A guest hammering the register window of a real device (rng): random
//! offsets, widths and values, hundreds of thousands of them. The
//! transport never panics, its status stays a prefix of the init sequence,
//! a reset always brings it back to a clean state from which a proper init
//! works, and what it logs stays within its rate limit.

use std::time::Instant;

use super::tests::{negotiate, r, setup_queue, w};
use super::*;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::test_logs::LogCount;
use crate::devices::virtio::test_utils::guest_memory;
use crate::devices::virtio::LogLimit;

/// xorshift64: a fixed, reproducible stream of "guest" choices.
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const REGS: [u64; 16] = [
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    QUEUE_NOTIFY,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_AVAIL_LOW,
    REG_QUEUE_AVAIL_HIGH,
    REG_QUEUE_USED_LOW,
    REG_QUEUE_USED_HIGH,
    CONFIG_OFFSET,
];

/// The status bits other than NEEDS_RESET are a prefix of ACK, DRIVER,
/// FEATURES_OK, DRIVER_OK (plus, maybe, FAILED).
fn assert_status_prefix(t: &mut MmioTransport) -> u32 {
    let s = r(t, REG_STATUS) & !STATUS_NEEDS_RESET;
    let init = s & !STATUS_FAILED;
    let steps = [
        STATUS_ACKNOWLEDGE,
        STATUS_DRIVER,
        STATUS_FEATURES_OK,
        STATUS_DRIVER_OK,
    ];
    let n = steps.iter().take_while(|&&b| init & b != 0).count();
    assert_eq!(
        init,
        steps[..n].iter().fold(0, |a, b| a | b),
        "status {s:#x}"
    );
    s
}

/// A well-behaved driver from reset to DRIVER_OK.
fn proper_init(t: &mut MmioTransport, mem: &GuestMemoryMmap) {
    w(t, REG_STATUS, 0);
    assert_eq!(r(t, REG_STATUS), 0, "reset clears the status");
    assert_eq!(r(t, REG_INTERRUPT_STATUS), 0, "reset clears interrupts");
    negotiate(t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(t, mem, 0, 0x1_0000, 64);
    let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    w(t, REG_STATUS, all);
    assert_eq!(
        r(t, REG_STATUS),
        all,
        "a proper init works after the hammering"
    );
}

#[test]
fn hammered_registers_never_break_the_transport() {
    let mem = guest_memory();
    let dev = Arc::new(Mutex::new(Rng::new().expect("rng")));
    let mut t = MmioTransport::new(mem.clone(), dev).expect("transport");
    let logs = LogCount::start();
    let started = Instant::now();
    let mut rand = Rand(0x9e37_79b9_7f4a_7c15);
    const OPS: usize = 200_000;
    for i in 0..OPS {
        let x = rand.next();
        let off = if x & 1 == 0 {
            REGS[(x >> 8) as usize % REGS.len()]
        } else {
            (x >> 8) % 0x180
        };
        let width = [4, 4, 4, 1, 2, 3, 8][(x >> 20) as usize % 7];
        let value = (x >> 32) as u32;
        // Status writes mostly try the next step, so deep states are reached.
        let value = if off == REG_STATUS && x & 2 == 0 {
            let s = r(&mut t, REG_STATUS) & !STATUS_NEEDS_RESET;
            s | [1, 2, 8, 4, 0x80, 0][(x >> 40) as usize % 6]
        } else {
            value
        };
        let before = assert_status_prefix(&mut t);
        let bytes = [value.to_le_bytes(), value.to_le_bytes()].concat();
        if x & 4 == 0 {
            let mut buf = [0u8; 8];
            t.read(off, &mut buf[..width]);
        } else {
            t.write(off, &bytes[..width]);
        }
        let after = assert_status_prefix(&mut t);
        let reset = off == REG_STATUS && width == 4 && x & 4 != 0 && value == 0;
        if !reset {
            assert_eq!(
                after & before,
                before,
                "{before:#x} -> {after:#x} lost bits"
            );
        }
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC_VALUE);
        if i % 10_000 == 0 {
            proper_init(&mut t, &mem);
        }
    }
    proper_init(&mut t, &mem);
    let logged = logs.get();
    // LogLimit's seconds are whole seconds of the process's clock, so a run
    // of d seconds touches up to floor(d) + 2 of them (a 0.9 s run can
    // straddle two).
    let secs = started.elapsed().as_secs() as usize + 2;
    // Fewer than twenty call sites, each at most BURST lines a second.
    let cap = 20 * LogLimit::BURST as usize * secs;
    assert!(
        logged <= cap,
        "{logged} log lines for {OPS} hostile accesses"
    );
}
