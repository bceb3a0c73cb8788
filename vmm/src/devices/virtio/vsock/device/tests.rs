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
use crate::devices::virtio::{ActivateContext, Interrupt, INT_VRING};

const RX_BUF: u32 = 4096;

struct Guest {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    irq: Arc<Interrupt>,
    rxq: TestQueue,
    txq: TestQueue,
    evq: TestQueue,
    rx_bufs: HashMap<u16, u64>,
    path: std::path::PathBuf,
}

/// Guest buffers sit at a fixed place per descriptor (chains take
/// descriptors in order), so a long stream reuses the same memory.
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x80_0000;
const TX_SLOT: u64 = 0x4000;

impl Guest {
    fn new(tag: &str) -> Self {
        let mem = guest_memory();
        let path =
            std::env::temp_dir().join(format!("kiln-vsock-e2e-{tag}-{}.sock", std::process::id()));
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
            evq,
            rx_bufs: HashMap::new(),
            path,
        };
        for _ in 0..32 {
            g.post_rx_buffer();
        }
        g
    }

    fn post_rx_buffer(&mut self) {
        let addr = RX_BASE + u64::from(self.rxq.next_head()) * u64::from(RX_BUF);
        let head = self.rxq.add_chain(&self.mem, &[(addr, RX_BUF, true)]);
        self.rx_bufs.insert(head, addr);
    }

    fn kick(&self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
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

    fn send(&mut self, hdr: VsockHeader, payload: &[u8]) {
        self.queue_tx(hdr, payload);
        self.kick(TXQ);
        for _ in 0..3 {
            self.em.run_with_timeout(10).unwrap();
        }
    }

    /// Puts one packet on the TX queue without kicking.
    fn queue_tx(&mut self, mut hdr: VsockHeader, payload: &[u8]) {
        assert!(HDR_SIZE + payload.len() <= TX_SLOT as usize);
        hdr.len = payload.len() as u32;
        let addr = TX_BASE + u64::from(self.txq.next_head()) * TX_SLOT;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_SIZE as u64))
            .unwrap();
        let len = (HDR_SIZE + payload.len()) as u32;
        self.txq.add_chain(&self.mem, &[(addr, len, false)]);
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
    assert!(!g.dev.lock().unwrap().state.is_active());
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

mod hostile;
mod stream;

#[test]
fn after_a_snapshot_the_guest_gets_a_transport_reset_event() {
    let mem = guest_memory();
    let path = std::env::temp_dir().join(format!("kiln-vsock-evq-{}.sock", std::process::id()));
    let dev = Arc::new(Mutex::new(Vsock::new(3, &path).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let rxq = TestQueue::new(&mem, 0x1_0000, QUEUE_SIZE);
    let txq = TestQueue::new(&mem, 0x2_0000, QUEUE_SIZE);
    let mut evq = TestQueue::new(&mem, 0x3_0000, QUEUE_SIZE);
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
    em.run_with_timeout(100).unwrap();
    // Nothing is sent before a snapshot, even with a buffer posted.
    mem.write_obj(0xffff_ffff_u32, GuestAddress(0x50_0000))
        .unwrap();
    evq.add_chain(&mem, &[(0x50_0000, 4, true)]);
    em.run_with_timeout(100).unwrap();
    assert!(evq.take_used(&mem).is_empty());

    dev.lock().unwrap().prepare_snapshot();
    dev.lock().unwrap().after_snapshot();
    em.run_with_timeout(100).unwrap();
    assert_eq!(evq.take_used(&mem), vec![(0, 4)]);
    let id: u32 = mem.read_obj(GuestAddress(0x50_0000)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_ne!(irq.status() & INT_VRING, 0);
    // Sent once.
    dev.lock().unwrap().process_event_queue(Instant::now());
    assert!(evq.take_used(&mem).is_empty());
}

/// A clone must not hand out a host port its snapshot's guest may still
/// hold a socket for: the restored guest would reset the new connection
/// (or reset it later, when the old socket's close timeout fires).
#[test]
fn a_restored_device_goes_on_from_the_snapshots_host_ports() {
    let mut source = Guest::new("ports-src");
    let mut used = Vec::new();
    for _ in 0..3 {
        let mut client = UnixStream::connect(&source.path).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        let (req, _) = source.recv();
        assert_eq!(req.op, op::REQUEST);
        used.push(req.src_port);
        source.send(from_guest(op::RST, 52, req.src_port), &[]);
    }
    let saved = source.dev.lock().unwrap().save_own().expect("vsock state");

    let mut clone = Guest::new("ports-clone");
    assert!(clone.dev.lock().unwrap().restore_own(&saved));
    let mut client = UnixStream::connect(&clone.path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let (req, _) = clone.recv();
    assert_eq!(req.op, op::REQUEST);
    assert!(
        used.iter().all(|&p| req.src_port > p),
        "clone's first host port {} reuses one of the source's {used:?}",
        req.src_port
    );
}

/// A host connection made right after a snapshot reaches the guest only
/// once the guest has handled the transport reset (it posts its event
/// buffer again and notifies): handling it resets every connection the
/// guest has, a new one too.
#[test]
fn after_a_transport_reset_new_connections_wait_for_the_guest_to_handle_it() {
    let mut g = Guest::new("reset-hold");
    g.evq.add_chain(&g.mem, &[(0x50_0000, 4, true)]);
    g.dev.lock().unwrap().prepare_snapshot();
    g.dev.lock().unwrap().after_snapshot();
    g.pump();
    assert_eq!(g.evq.take_used(&g.mem), vec![(0, 4)], "reset sent");

    let mut client = UnixStream::connect(&g.path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    g.pump();
    assert!(
        g.rxq.take_used(&g.mem).is_empty(),
        "held until the guest is done"
    );

    // The guest handled the event: its buffer goes back, it notifies.
    g.evq.add_chain(&g.mem, &[(0x50_0000, 4, true)]);
    g.kick(EVQ);
    let (req, _) = g.recv();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 52));
}
