//! Long streams through the device, with the test as a guest driver that
//! behaves like Linux's virtio-vsock: it reads used rings only when the
//! device raises its interrupt, kicks after adding buffers, refills RX once
//! half its buffers are used, sends only within the host's credit and tells
//! the host its own. A lost interrupt, kick, wake-up or credit update
//! stalls the stream, and the test fails with the device's state dump
//! instead of hanging.

use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use super::*;
use crate::devices::virtio::vsock::SHUTDOWN_SEND;

/// Bytes each way.
const STREAM_BYTES: usize = 16 << 20;
/// The guest's receive buffer, advertised to the host.
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload the driver puts in one TX packet.
const MAX_TX_PAYLOAD: usize = TX_SLOT as usize - HDR_SIZE;
/// How long nothing may move before the stream counts as stalled.
const STALL: Duration = Duration::from_secs(10);
const GUEST_PORT: u32 = 1024;

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// How the host side of the stream behaves.
#[derive(Clone, Copy)]
struct HostPace {
    /// Sleep this long after every `every` bytes read or written.
    pause: Duration,
    every: usize,
}

/// The guest end of one connection.
struct Driver {
    g: Guest,
    host_port: u32,
    rx_posted: usize,
    // guest -> host
    sent: usize,
    tx_cnt: Wrapping<u32>,
    tx_in_flight: usize,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    shutdown_sent: bool,
    // host -> guest
    received: usize,
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_sent: Wrapping<u32>,
    credit_update_owed: bool,
    host_done: bool,
    interrupts: u64,
}

impl Driver {
    fn header(&self, op: u16) -> VsockHeader {
        let mut h = from_guest(op, GUEST_PORT, self.host_port);
        h.buf_alloc = GUEST_BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt.0;
        h
    }

    fn credit(&self) -> usize {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    fn tx(&mut self, hdr: VsockHeader, payload: &[u8]) {
        self.g.queue_tx(hdr, payload);
        self.tx_in_flight += 1;
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_update_owed = false;
    }

    /// Handles one interrupt: acks it, then drains both used rings.
    fn on_interrupt(&mut self) {
        self.interrupts += 1;
        let status = self.g.irq.status();
        self.g.irq.ack(status);
        self.tx_in_flight -= self.g.txq.take_used(&self.g.mem).len();
        for (head, len) in self.g.rxq.take_used(&self.g.mem) {
            self.rx_posted -= 1;
            let addr = self.g.rx_bufs.remove(&head).expect("known rx buffer");
            let mut raw = [0u8; HDR_SIZE];
            self.g.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = VsockHeader::from_bytes(&raw);
            assert_eq!(len as usize, HDR_SIZE + hdr.len as usize, "used length");
            assert_eq!((hdr.src_port, hdr.dst_port), (self.host_port, GUEST_PORT));
            self.peer_buf_alloc = hdr.buf_alloc;
            self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
            match hdr.op {
                op::RW => {
                    let mut data = vec![0u8; hdr.len as usize];
                    self.g
                        .mem
                        .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
                        .unwrap();
                    assert!(
                        data == pattern(self.received, data.len()),
                        "host -> guest bytes corrupted at offset {}",
                        self.received
                    );
                    self.received += data.len();
                    // The reader consumes at once, as the agent does.
                    self.fwd_cnt += Wrapping(hdr.len);
                }
                op::CREDIT_UPDATE => {}
                op::CREDIT_REQUEST => self.credit_update_owed = true,
                op::SHUTDOWN => {
                    assert_eq!(hdr.flags & SHUTDOWN_SEND, SHUTDOWN_SEND, "{hdr:?}");
                    self.host_done = true;
                }
                other => panic!("unexpected op {other} from the host: {hdr:?}"),
            }
        }
        if self.rx_posted < usize::from(QUEUE_SIZE) / 2 {
            while self.rx_posted < usize::from(QUEUE_SIZE) {
                self.g.post_rx_buffer();
                self.rx_posted += 1;
            }
            self.g.kick(RXQ);
        }
    }

    /// Sends what credit and free descriptors allow, then tells the host
    /// about freed receive space when its view of it runs low.
    fn send_some(&mut self) {
        let mut queued = false;
        while self.sent < STREAM_BYTES
            && self.tx_in_flight < usize::from(QUEUE_SIZE)
            && self.credit() > 0
        {
            let n = MAX_TX_PAYLOAD
                .min(self.credit())
                .min(STREAM_BYTES - self.sent);
            let hdr = self.header(op::RW);
            self.tx(hdr, &pattern(self.sent, n));
            self.tx_cnt += Wrapping(n as u32);
            self.sent += n;
            queued = true;
        }
        let freed_unannounced = (self.fwd_cnt - self.fwd_cnt_sent).0;
        if (freed_unannounced > GUEST_BUF_ALLOC / 2 || self.credit_update_owed)
            && self.tx_in_flight < usize::from(QUEUE_SIZE)
        {
            let hdr = self.header(op::CREDIT_UPDATE);
            self.tx(hdr, &[]);
            queued = true;
        }
        if self.sent == STREAM_BYTES
            && !self.shutdown_sent
            && self.tx_in_flight < usize::from(QUEUE_SIZE)
        {
            let mut hdr = self.header(op::SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            self.tx(hdr, &[]);
            self.shutdown_sent = true;
            queued = true;
        }
        if queued {
            self.g.kick(TXQ);
        }
    }
}

/// The host client: one thread writes the stream, one reads it back.
fn host_side(
    mut client: UnixStream,
    pace: HostPace,
    read_progress: Arc<AtomicUsize>,
) -> (JoinHandle<()>, JoinHandle<Vec<u8>>) {
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let data = pattern(0, STREAM_BYTES);
        for (i, chunk) in data.chunks(pace.every.max(1)).enumerate() {
            writer.write_all(chunk).unwrap();
            if i % 2 == 1 {
                std::thread::sleep(pace.pause);
            }
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let r = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(STREAM_BYTES);
        let mut buf = vec![0u8; 64 * 1024];
        let mut since_pause = 0;
        while got.len() < STREAM_BYTES {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "host stream ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            read_progress.store(got.len(), Ordering::Relaxed);
            since_pause += n;
            if since_pause >= pace.every {
                since_pause = 0;
                std::thread::sleep(pace.pause);
            }
        }
        got
    });
    (w, r)
}

fn stream_both_ways(tag: &str, pace: HostPace) {
    let mut g = Guest::new(tag);
    let mut client = UnixStream::connect(&g.path).unwrap();
    client
        .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, op::REQUEST);
    let host_port = req.src_port;
    let mut resp = from_guest(op::RESPONSE, GUEST_PORT, host_port);
    resp.buf_alloc = GUEST_BUF_ALLOC;
    g.send(resp, &[]);
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_exactly(&mut client, ok.len()), ok.as_bytes());
    client.set_read_timeout(Some(STALL * 2)).unwrap();

    // The driver takes over: drain the interrupt left by the handshake and
    // fill the RX ring as Linux does.
    let _ = g.irq.eventfd().read();
    let _ = g.rxq.take_used(&g.mem);
    let _ = g.txq.take_used(&g.mem);
    let rx_posted = g.rx_bufs.len();
    let mut d = Driver {
        g,
        host_port,
        rx_posted,
        sent: 0,
        tx_cnt: Wrapping(0),
        tx_in_flight: 0,
        peer_buf_alloc: req.buf_alloc,
        peer_fwd_cnt: Wrapping(req.fwd_cnt),
        shutdown_sent: false,
        received: 0,
        fwd_cnt: Wrapping(0),
        fwd_cnt_sent: Wrapping(0),
        credit_update_owed: false,
        host_done: false,
        interrupts: 0,
    };
    let read_progress = Arc::new(AtomicUsize::new(0));
    let (writer, reader) = host_side(client, pace, read_progress.clone());

    let mut last = (0, 0, 0);
    let mut last_move = Instant::now();
    loop {
        d.g.em.run_with_timeout(5).unwrap();
        // Like a guest, look at the rings only when interrupted.
        if d.g.irq.eventfd().read().is_ok() {
            d.on_interrupt();
        }
        d.send_some();
        let host_read = read_progress.load(Ordering::Relaxed);
        if d.host_done && d.shutdown_sent && host_read == STREAM_BYTES {
            break;
        }
        let now = (d.sent, d.received, host_read);
        if now != last {
            last = now;
            last_move = Instant::now();
        }
        assert!(
            last_move.elapsed() < STALL,
            "stream stalled: guest sent {} (credit {}, {} descriptors in flight), guest received {}, host read {}; {} interrupts; device state:\n{}",
            d.sent,
            d.credit(),
            d.tx_in_flight,
            d.received,
            host_read,
            d.interrupts,
            d.g.dev.lock().unwrap().describe()
        );
    }
    writer.join().unwrap();
    let got = reader.join().unwrap();
    assert!(
        got == pattern(0, STREAM_BYTES),
        "guest -> host bytes corrupted"
    );
    assert_eq!(d.received, STREAM_BYTES);
    // The guest closes; the device answers its full shutdown with RST.
    let mut sd = d.header(op::SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    d.g.send(sd, &[]);
}

#[test]
fn long_stream_both_ways_through_a_linux_like_driver() {
    stream_both_ways(
        "stream-fast",
        HostPace {
            pause: Duration::ZERO,
            every: 256 * 1024,
        },
    );
}

#[test]
fn long_stream_survives_a_slow_host_reader_and_a_bursty_writer() {
    // The host reads 32 KiB at a time with pauses, so kiln-vmm's buffer
    // fills, the guest runs out of credit and waits for credit updates; the
    // writer pauses between bursts, so reads hit EAGAIN and must re-arm.
    stream_both_ways(
        "stream-slow",
        HostPace {
            pause: Duration::from_millis(1),
            every: 32 * 1024,
        },
    );
}
