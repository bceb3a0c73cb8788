//! virtio-vsock device state: RX/TX/event queues, the guest CID config
//! space, and the glue between the queues and the [`Muxer`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{read_tx, RxBuffer};
use super::{
    VsockError, DEFAULT_CONNECT_TIMEOUT, EVQ, HOST_CID, MAX_PKT_PAYLOAD, QUEUE_SIZE, RXQ, TXQ,
};
use crate::devices::virtio::{
    describe_queue, pop_chain, read_config_bytes, warn_limited, ActivateContext, ActivateError, VirtioDevice,
    INT_VRING, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// A virtio socket device whose host side is unix sockets.
pub struct Vsock {
    cid: u64,
    pub(super) queue_evts: Vec<EventFd>,
    /// Signalled on activation and reset so the event loop catches up.
    pub(super) state_evt: EventFd,
    pub(super) active: Option<ActivateContext>,
    broken: bool,
    pub(super) muxer: Muxer,
    scratch: Vec<u8>,
}

impl Vsock {
    /// A device for guest CID `guest_cid` whose host side listens on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, VsockError> {
        Self::with_connect_timeout(guest_cid, uds_path, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Like [`Vsock::new`], with the time a host client gets to send its
    /// CONNECT line and the guest to accept.
    pub fn with_connect_timeout(
        guest_cid: u64,
        uds_path: impl Into<PathBuf>,
        connect_timeout: Duration,
    ) -> Result<Self, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            cid: guest_cid,
            queue_evts: vec![evt()?, evt()?, evt()?],
            state_evt: evt()?,
            active: None,
            broken: false,
            muxer: Muxer::new(guest_cid, uds_path.into(), connect_timeout)?,
            scratch: vec![0; MAX_PKT_PAYLOAD],
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// The host socket path clients connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    fn mark_broken(&mut self, what: &str) {
        warn_limited!("vsock: {what}; device needs reset");
        self.broken = true;
        if let Some(ctx) = &self.active {
            ctx.interrupt.signal_needs_reset();
        }
    }

    /// Handles the guest's TX queue, then answers on the RX queue.
    pub(super) fn process_tx(&mut self, now: Instant) {
        let Some(ctx) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        let queue = &mut ctx.queues[TXQ];
        let mut budget = queue.size();
        let mut used = false;
        let mut broken = None;
        loop {
            if budget == 0 {
                let _ = self.queue_evts[TXQ].write(1);
                break;
            }
            budget -= 1;
            let chain = match pop_chain(queue, &ctx.mem) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => {
                    broken = Some("corrupted TX queue");
                    break;
                }
            };
            let head = chain.head_index();
            match read_tx(chain, &ctx.mem, &mut self.scratch) {
                Ok(hdr) => {
                    let payload = &self.scratch[..hdr.len as usize];
                    self.muxer.on_guest_packet(&hdr, payload, now);
                }
                Err(e) => warn_limited!("vsock: bad TX packet: {e}"),
            }
            if queue.add_used(&ctx.mem, head, 0).is_err() {
                broken = Some("cannot update TX used ring");
                break;
            }
            used = true;
        }
        if used {
            ctx.interrupt.trigger(INT_VRING);
        }
        if let Some(what) = broken {
            return self.mark_broken(what);
        }
        self.process_rx(now);
    }

    /// Moves packets from the muxer into the guest's RX buffers.
    pub(super) fn process_rx(&mut self, now: Instant) {
        let Some(ctx) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        let queue = &mut ctx.queues[RXQ];
        let mut budget = queue.size();
        let mut used = false;
        let mut broken = None;
        while self.muxer.has_rx() {
            if budget == 0 {
                let _ = self.queue_evts[RXQ].write(1);
                break;
            }
            budget -= 1;
            let chain = match pop_chain(queue, &ctx.mem) {
                Ok(Some(c)) => c,
                // No guest buffers: the muxer keeps its packets.
                Ok(None) => break,
                Err(_) => {
                    broken = Some("corrupted RX queue");
                    break;
                }
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(chain, &ctx.mem) {
                Ok(rx) => {
                    let cap = rx.payload_capacity();
                    match self.muxer.next_rx(&mut self.scratch[..cap], now) {
                        Some((hdr, n)) => rx.write(&hdr, &self.scratch[..n]).unwrap_or_else(|e| {
                            warn_limited!("vsock: packet lost writing RX buffer: {e}");
                            0
                        }),
                        None => {
                            // Nothing after all: give the buffer back.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                Err(e) => {
                    warn_limited!("vsock: bad RX buffer: {e}");
                    0
                }
            };
            if queue.add_used(&ctx.mem, head, len).is_err() {
                broken = Some("cannot update RX used ring");
                break;
            }
            used = true;
        }
        if used {
            ctx.interrupt.trigger(INT_VRING);
        }
        if let Some(what) = broken {
            self.mark_broken(what);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_limited!("vsock: guest wrote read-only config space");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        self.active = Some(ctx);
        self.broken = false;
        let _ = self.state_evt.write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.muxer.reset();
        // The event loop unregisters the dropped connections' fds.
        let _ = self.state_evt.write(1);
    }

    fn describe(&self) -> String {
        let Some(ctx) = &self.active else {
            return format!("vsock cid {}: not active\n{}", self.cid, self.muxer.describe());
        };
        let mut s = format!(
            "vsock cid {}: broken {} interrupt status {:#x}\n",
            self.cid,
            self.broken,
            ctx.interrupt.status()
        );
        for (name, i) in [("rx", RXQ), ("tx", TXQ), ("ev", EVQ)] {
            s.push_str(&format!(
                "  {name}q: {}\n",
                describe_queue(&ctx.queues[i], &ctx.mem)
            ));
        }
        s.push_str(&self.muxer.describe());
        s
    }
}

// EVQ is held but never written: kiln sends no transport events (those are
// for snapshot restore).
const _: usize = EVQ;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    //! The device driven end to end: a real event manager, unix clients on
    //! the host side, and the test playing the guest driver on the queues.

    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};
    use crate::devices::virtio::vsock::packet::VsockHeader;
    use crate::devices::virtio::vsock::{op, HDR_SIZE, SHUTDOWN_BOTH, TYPE_STREAM};
    use crate::devices::virtio::Interrupt;

    const RX_BUF: u32 = 4096;

    struct Guest {
        mem: GuestMemoryMmap,
        dev: Arc<Mutex<Vsock>>,
        em: EventManager<Arc<Mutex<Vsock>>>,
        irq: Arc<Interrupt>,
        rxq: TestQueue,
        txq: TestQueue,
        rx_bufs: HashMap<u16, u64>,
        next_rx_addr: u64,
        next_tx_addr: u64,
        path: std::path::PathBuf,
    }

    impl Guest {
        fn new(tag: &str) -> Self {
            let mem = guest_memory();
            let path = std::env::temp_dir()
                .join(format!("kiln-vsock-e2e-{tag}-{}.sock", std::process::id()));
            let dev = Arc::new(Mutex::new(Vsock::new(3, &path).unwrap()));
            let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
            em.add_subscriber(dev.clone());
            let rxq = TestQueue::new(&mem, 0x1_0000, QUEUE_SIZE);
            let txq = TestQueue::new(&mem, 0x2_0000, QUEUE_SIZE);
            let evq = TestQueue::new(&mem, 0x3_0000, QUEUE_SIZE);
            let irq = Arc::new(Interrupt::new().unwrap());
            dev.lock()
                .unwrap()
                .activate(ActivateContext {
                    mem: mem.clone(),
                    queues: vec![rxq.queue(), txq.queue(), evq.queue()],
                    interrupt: irq.clone(),
                    acked_features: 1 << VIRTIO_F_VERSION_1,
                })
                .unwrap();
            let mut g = Guest {
                mem,
                dev,
                em,
                irq,
                rxq,
                txq,
                rx_bufs: HashMap::new(),
                next_rx_addr: 0x10_0000,
                next_tx_addr: 0x80_0000,
                path,
            };
            for _ in 0..32 {
                g.post_rx_buffer();
            }
            g
        }

        fn post_rx_buffer(&mut self) {
            let addr = self.next_rx_addr;
            self.next_rx_addr += u64::from(RX_BUF);
            let head = self.rxq.add_chain(&self.mem, &[(addr, RX_BUF, true)]);
            self.rx_bufs.insert(head, addr);
        }

        fn kick(&self, q: usize) {
            self.dev.lock().unwrap().queue_evts[q].write(1).unwrap();
        }

        /// Runs the event loop until the device hands the guest a packet.
        fn recv(&mut self) -> (VsockHeader, Vec<u8>) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(&(head, len)) = self.rxq.take_used(&self.mem).first() {
                    let addr = self.rx_bufs.remove(&head).expect("known rx buffer");
                    let mut raw = [0u8; HDR_SIZE];
                    self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                    let hdr = VsockHeader::from_bytes(&raw);
                    assert_eq!(len as usize, HDR_SIZE + hdr.len as usize);
                    let mut payload = vec![0u8; hdr.len as usize];
                    self.mem
                        .read_slice(&mut payload, GuestAddress(addr + HDR_SIZE as u64))
                        .unwrap();
                    self.post_rx_buffer();
                    self.kick(RXQ);
                    return (hdr, payload);
                }
                assert!(Instant::now() < deadline, "guest got no packet in time");
                self.em.run_with_timeout(50).unwrap();
            }
        }

        fn send(&mut self, mut hdr: VsockHeader, payload: &[u8]) {
            hdr.len = payload.len() as u32;
            let addr = self.next_tx_addr;
            self.next_tx_addr += 0x1_0000;
            self.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(payload, GuestAddress(addr + HDR_SIZE as u64))
                .unwrap();
            let len = (HDR_SIZE + payload.len()) as u32;
            self.txq.add_chain(&self.mem, &[(addr, len, false)]);
            self.kick(TXQ);
            for _ in 0..3 {
                self.em.run_with_timeout(10).unwrap();
            }
        }

        fn pump(&mut self) {
            for _ in 0..5 {
                self.em.run_with_timeout(10).unwrap();
            }
        }
    }

    fn from_guest(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Default::default()
        }
    }

    fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn host_connects_guest_accepts_data_both_ways_then_rst() {
        let mut g = Guest::new("host");
        let mut client = UnixStream::connect(&g.path).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        let (req, _) = g.recv();
        assert_eq!(
            (req.op, req.dst_port, req.src_cid, req.dst_cid),
            (op::REQUEST, 52, HOST_CID, 3)
        );
        let host_port = req.src_port;
        // The guest accepts.
        g.send(from_guest(op::RESPONSE, 52, host_port), &[]);
        let ok = format!("OK {host_port}\n");
        assert_eq!(read_exactly(&mut client, ok.len()), ok.as_bytes());
        // host -> guest
        client.write_all(b"hello guest").unwrap();
        let (rw, data) = g.recv();
        assert_eq!((rw.op, rw.dst_port, rw.src_port), (op::RW, 52, host_port));
        assert_eq!(data, b"hello guest");
        // guest -> host
        g.send(from_guest(op::RW, 52, host_port), b"hello host");
        assert_eq!(read_exactly(&mut client, 10), b"hello host");
        assert_ne!(g.irq.status() & INT_VRING, 0);
        // The guest resets: the host sees EOF, the connection is gone.
        g.send(from_guest(op::RST, 52, host_port), &[]);
        assert_eq!(read_exactly(&mut client, 0), b"");
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0);
        assert_eq!(g.dev.lock().unwrap().muxer.connection_count(), 0);
    }

    #[test]
    fn guest_refuses_host_connection() {
        let mut g = Guest::new("refuse");
        let mut client = UnixStream::connect(&g.path).unwrap();
        client.write_all(b"CONNECT 9\n").unwrap();
        let (req, _) = g.recv();
        g.send(from_guest(op::RST, 9, req.src_port), &[]);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 16];
        assert_eq!(client.read(&mut b).unwrap(), 0, "closed without OK");
    }

    #[test]
    fn guest_connects_to_host_listener_and_shuts_down() {
        let mut g = Guest::new("guest");
        let mut lpath = g.path.clone().into_os_string();
        lpath.push("_1024");
        let _ = std::fs::remove_file(&lpath);
        let listener = UnixListener::bind(&lpath).unwrap();
        g.send(from_guest(op::REQUEST, 40000, 1024), &[]);
        let (resp, _) = g.recv();
        assert_eq!(
            (resp.op, resp.src_port, resp.dst_port),
            (op::RESPONSE, 1024, 40000)
        );
        let (mut host, _) = listener.accept().unwrap();
        g.send(from_guest(op::RW, 40000, 1024), b"ping");
        assert_eq!(read_exactly(&mut host, 4), b"ping");
        host.write_all(b"pong").unwrap();
        let (rw, data) = g.recv();
        assert_eq!((rw.op, data.as_slice()), (op::RW, &b"pong"[..]));
        // The guest closes: SHUTDOWN both -> host EOF, device answers RST.
        let mut sd = from_guest(op::SHUTDOWN, 40000, 1024);
        sd.flags = SHUTDOWN_BOTH;
        g.send(sd, &[]);
        let (rst, _) = g.recv();
        assert_eq!(rst.op, op::RST);
        let mut b = [0u8; 1];
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(host.read(&mut b).unwrap(), 0);
        // Unknown port: RST.
        g.send(from_guest(op::REQUEST, 40001, 1025), &[]);
        assert_eq!(g.recv().0.op, op::RST);
        let _ = std::fs::remove_file(&lpath);
    }

    #[test]
    fn hostile_tx_packets_are_survived() {
        let mut g = Guest::new("hostile");
        // Truncated header, lying length, out-of-memory descriptor.
        let addr = 0x70_0000;
        g.mem
            .write_slice(&[0xffu8; 64], GuestAddress(addr))
            .unwrap();
        g.txq.add_chain(&g.mem, &[(addr, 10, false)]);
        let mut liar = from_guest(op::RW, 1, 2);
        liar.len = 60_000;
        g.mem
            .write_slice(&liar.to_bytes(), GuestAddress(addr + 0x100))
            .unwrap();
        g.txq.add_chain(&g.mem, &[(addr + 0x100, 44, false)]);
        g.txq.add_chain(&g.mem, &[(0x4_0000_0000, 44, false)]);
        g.kick(TXQ);
        g.pump();
        assert_eq!(g.txq.take_used(&g.mem).len(), 3, "bad packets are consumed");
        // The device still works.
        g.send(from_guest(op::RW, 5, 6), b"x");
        assert_eq!(g.recv().0.op, op::RST);
        // A corrupted available index puts the device in needs-reset.
        g.txq.set_avail_idx(&g.mem, 60_000);
        g.kick(TXQ);
        g.pump();
        assert!(g.irq.needs_reset());
        // After a reset the device is inactive until the driver activates it again.
        g.dev.lock().unwrap().reset();
        g.pump();
        assert!(g.dev.lock().unwrap().active.is_none());
    }

    #[test]
    fn config_space_and_cid_validation() {
        let path = std::env::temp_dir().join(format!("kiln-vsock-cfg-{}.sock", std::process::id()));
        let dev = Vsock::new(0x1_0203, &path).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1_0203);
        let mut b4 = [0u8; 4];
        dev.read_config(4, &mut b4);
        assert_eq!(b4, [0; 4]);
        dev.read_config(2, &mut b4);
        assert_eq!(b4, [1, 0, 0, 0]);
        drop(dev);
        for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            assert!(matches!(
                Vsock::new(bad, &path),
                Err(VsockError::InvalidCid(_))
            ));
        }
    }
}
