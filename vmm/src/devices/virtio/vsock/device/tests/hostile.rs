//! A hostile guest driver: descriptor loops, heads and indexes out of
//! range, buffers outside guest memory, request and RST storms. The device
//! never panics, consumes or refuses what it cannot use, keeps its queues
//! bounded, marks itself broken (DEVICE_NEEDS_RESET) when the rings
//! themselves are corrupt, and logs at a bounded rate.

use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_logs::LogCount;
use crate::devices::virtio::vsock::MAX_PENDING_RST;
use crate::devices::virtio::{LogLimit, VRING_DESC_F_NEXT};

/// Beyond the 16 MiB of test memory.
const OUTSIDE: u64 = 0x4_0000_0000;

impl Guest {
    /// Writes descriptor `idx` of the TX table directly.
    fn write_tx_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.txq.desc + 16 * u64::from(idx);
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// The device still answers: a packet for no connection gets an RST.
    fn assert_alive(&mut self) {
        self.send(from_guest(op::RW, 7, 8), b"?");
        assert_eq!(self.recv().0.op, op::RST, "device stopped answering");
    }

    /// Every RX packet the device has for the guest, with fresh buffers.
    fn drain_rx(&mut self) -> usize {
        let mut n = 0;
        loop {
            self.kick(RXQ);
            self.pump();
            let used = self.rxq.take_used(&self.mem);
            if used.is_empty() {
                return n;
            }
            for (head, _) in used {
                self.rx_bufs.remove(&head);
                self.post_rx_buffer();
                n += 1;
            }
        }
    }
}

#[test]
fn descriptor_loop_is_consumed_not_followed() {
    let mut g = Guest::new("loop");
    let head = g.txq.next_head();
    let addr = 0x70_0000;
    g.mem
        .write_slice(&from_guest(op::RW, 1, 2).to_bytes(), GuestAddress(addr))
        .unwrap();
    // 0 -> 1 -> 0 -> ...: a chain that never ends.
    g.write_tx_desc(head, addr, 8, VRING_DESC_F_NEXT, head + 1);
    g.write_tx_desc(head + 1, addr + 8, 8, VRING_DESC_F_NEXT, head);
    g.txq.publish(&g.mem, head);
    g.kick(TXQ);
    g.pump();
    let used = g.txq.take_used(&g.mem);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), [head]);
    assert!(!g.irq.needs_reset(), "a bad chain is not a broken ring");
    // The descriptors are reused by the next chains, as a driver would.
    g.txq.add_chain(&g.mem, &[(addr, 1, false)]);
    g.assert_alive();
}

#[test]
fn head_out_of_range_breaks_the_device_cleanly() {
    let mut g = Guest::new("head");
    g.txq.publish(&g.mem, 0xfff0);
    g.kick(TXQ);
    g.pump();
    assert!(g.irq.needs_reset());
    // Broken: further kicks do nothing (no used entries, no panic).
    g.queue_tx(from_guest(op::RW, 1, 2), b"x");
    g.kick(TXQ);
    g.pump();
    assert!(g.txq.take_used(&g.mem).is_empty());
    // A reset and a new activation bring it back.
    let mut g = Guest::new("head-after");
    g.assert_alive();
}

#[test]
fn avail_index_jumping_back_breaks_the_device() {
    let mut g = Guest::new("jump");
    g.assert_alive();
    let idx: u16 = g.mem.read_obj(GuestAddress(g.txq.avail + 2)).unwrap();
    // One behind what the device already consumed: 65535 "pending".
    g.txq.set_avail_idx(&g.mem, idx.wrapping_sub(1));
    g.kick(TXQ);
    g.pump();
    assert!(g.irq.needs_reset());
}

#[test]
fn rx_buffers_outside_memory_are_returned_empty() {
    let mut g = Guest::new("rxbad");
    // Use up the good buffers with RSTs the guest does not read yet.
    for port in 0..32 {
        g.queue_tx(from_guest(op::RW, 100 + port, 9), &[]);
    }
    g.kick(TXQ);
    g.pump();
    assert_eq!(g.rxq.take_used(&g.mem).len(), 32);
    g.rx_bufs.clear();
    // Now only hostile buffers: outside memory, and read-only.
    let bad_head = g.rxq.add_chain(&g.mem, &[(OUTSIDE, RX_BUF, true)]);
    let ro_head = g.rxq.add_chain(&g.mem, &[(RX_BASE, RX_BUF, false)]);
    g.send(from_guest(op::RW, 1, 9), &[]);
    g.kick(RXQ);
    g.pump();
    let used = g.rxq.take_used(&g.mem);
    assert_eq!(
        used,
        [(bad_head, 0), (ro_head, 0)],
        "bad buffers come back empty"
    );
    assert!(!g.irq.needs_reset());
}

#[test]
fn request_and_rst_storms_stay_bounded_and_quiet() {
    let mut g = Guest::new("storm");
    let logs = LogCount::start();
    let started = Instant::now();
    let mut sent = 0u32;
    // 4000 packets in batches of a queue's worth: REQUESTs to ports nobody
    // listens on (each answered by an RST the guest never reads), RSTs for
    // connections that never existed, and packets with a bad type.
    while sent < 4000 {
        for _ in 0..(QUEUE_SIZE / 2) {
            let port = 50_000 + sent;
            let mut hdr = match sent % 3 {
                0 => from_guest(op::REQUEST, port, 60_000),
                1 => from_guest(op::RST, port, 1024),
                _ => from_guest(op::RW, port, 1024),
            };
            if sent % 3 == 2 {
                hdr.type_ = 99;
            }
            g.queue_tx(hdr, &[]);
            sent += 1;
        }
        g.kick(TXQ);
        g.pump();
        let _ = g.txq.take_used(&g.mem);
    }
    assert!(!g.irq.needs_reset());
    assert_eq!(g.dev.lock().unwrap().muxer.connection_count(), 0);
    // The device filled the guest's 32 posted buffers; what waits beyond
    // them is capped (without the cap: about 2700 RSTs).
    let pending = g.drain_rx();
    assert!(
        pending <= 32 + MAX_PENDING_RST,
        "{pending} packets queued for the guest"
    );
    let logged = logs.get();
    // Whole seconds of the limiter's clock a run of d seconds touches:
    // up to floor(d) + 2.
    let secs = started.elapsed().as_secs() as usize + 2;
    // A handful of call sites, each at most BURST lines a second.
    let cap = 4 * LogLimit::BURST as usize * secs;
    assert!(logged <= cap, "{logged} log lines for {sent} bad packets");
    drop(logs);
    g.assert_alive();
}
