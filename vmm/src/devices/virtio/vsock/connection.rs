//! One vsock stream connection between the guest and a host unix stream.
//!
//! "local" is the host end, "peer" the guest end. The state machine:
//!
//! ```text
//! host CONNECT  -> LocalInit --guest RESPONSE--> Established
//! guest REQUEST ->               (RESPONSE sent) Established
//! Established --SHUTDOWN both ways / errors / timeouts--> Closing (RST queued) -> Dead
//! any --guest RST--> Dead
//! ```
//!
//! Flow control, guest -> host: we advertise `buf_alloc` = the size of our
//! per-connection buffer and count delivered bytes in `fwd_cnt`; a guest
//! that sends beyond that credit is reset, so the buffer never grows past
//! [`CONN_BUF_SIZE`]. Host -> guest: we never send more than the guest's
//! `buf_alloc - (rx_cnt - fwd_cnt)`, and ask for credit when it runs out.
//!
//! Time is passed in (`now`) so the state machine is testable.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::VsockHeader;
use super::unix::ok_line;
use super::{
    op, CLOSE_TIMEOUT, CONN_BUF_SIZE, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// Payloads below this are "small": Linux queues each received packet as a
/// buffer of its own, and bounds the queue by buffer count as well as bytes.
const SMALL_PACKET: usize = 1024;

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated; REQUEST queued or sent, waiting for RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
    /// Aborted; an RST still has to reach the guest.
    Closing,
    /// Finished; the muxer drops it.
    Dead,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: bool,
    rst: bool,
}

/// A vsock connection and its host stream.
pub struct Connection {
    stream: UnixStream,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,
    /// Whether the host opened it (its local port came from the muxer's pool).
    host_initiated: bool,
    state: State,
    deadline: Option<Instant>,
    pending: Pending,

    // guest -> host
    tx_buf: VecDeque<u8>,
    buf_alloc: u32,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,

    // host -> guest
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    /// The host stream may have bytes for the guest.
    rw_pending: bool,
    credit_request_sent: bool,
    /// Data packets sent to the guest, and how many were small (each costs
    /// the guest a whole queued buffer).
    rw_packets: u64,
    small_rw_packets: u64,

    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    /// SHUTDOWN flags we decided on (sent or queued).
    local_shut: u32,
    /// The host closed its end entirely.
    host_hup: bool,
}

impl Connection {
    fn new(stream: UnixStream, peer_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            peer_cid,
            local_port,
            peer_port,
            host_initiated: false,
            state: State::LocalInit,
            deadline: None,
            pending: Pending::default(),
            tx_buf: VecDeque::new(),
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            rw_pending: false,
            credit_request_sent: false,
            rw_packets: 0,
            small_rw_packets: 0,
            peer_shut: 0,
            local_shut: 0,
            host_hup: false,
        }
    }

    /// A host client asked for guest port `peer_port`; REQUEST is queued.
    pub fn new_local(
        stream: UnixStream,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let mut c = Self::new(stream, peer_cid, local_port, peer_port);
        c.host_initiated = true;
        c.pending.request = true;
        c.deadline = Some(now + timeout);
        c
    }

    /// The guest's REQUEST `hdr` reached a host listener; RESPONSE is queued.
    pub fn new_peer(stream: UnixStream, hdr: &VsockHeader) -> Self {
        let mut c = Self::new(stream, hdr.src_cid, hdr.dst_port, hdr.src_port);
        c.state = State::Established;
        c.pending.response = true;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c
    }

    /// The host stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Takes the host stream out of a dead connection (to close it later).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Current state.
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the muxer should drop it.
    pub fn is_dead(&self) -> bool {
        self.state == State::Dead
    }

    /// Whether the host opened it.
    pub fn host_initiated(&self) -> bool {
        self.host_initiated
    }

    /// When [`Connection::on_timer`] next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes of the guest's credit we may still use.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host bytes may still flow to the guest.
    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.local_shut & SHUTDOWN_SEND == 0
    }

    /// Aborts: the host sees its stream close now; an RST goes to the guest.
    pub fn reset(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.tx_buf = VecDeque::new();
        self.rw_pending = false;
        self.deadline = None;
        if self.state == State::LocalInit && self.pending.request {
            // The guest never heard of it.
            self.state = State::Dead;
            return;
        }
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.state = State::Closing;
    }

    /// The flow-control state, for log lines about a connection's end.
    fn counters(&self) -> String {
        format!(
            "to guest {} bytes in {} packets ({} small), guest freed {} of buf {}; from guest {} delivered + {} buffered",
            self.rx_cnt,
            self.rw_packets,
            self.small_rw_packets,
            self.peer_fwd_cnt,
            self.peer_buf_alloc,
            self.fwd_cnt,
            self.tx_buf.len()
        )
    }

    /// Everything about the connection, for a debug dump: state, what is
    /// owed to the guest, both credit directions, and the bytes waiting in
    /// the host socket each way.
    pub fn describe(&self) -> String {
        let (inq, outq) = socket_queues(&self.stream);
        format!(
            "state {:?} pending {:?} rw_pending {} credit_request_sent {} has_rx {} interest {:?} \
             peer_credit {} (buf {} fwd_cnt {} rx_cnt {}) our buf {} fwd_cnt {} last_sent {} tx_buf {} \
             shut peer {:#x} local {:#x} host_hup {} deadline {:?} \
             host socket: {inq} bytes unread by us, {outq} unread by the client; {}",
            self.state,
            self.pending,
            self.rw_pending,
            self.credit_request_sent,
            self.has_rx(),
            self.interest(),
            self.peer_credit(),
            self.peer_buf_alloc,
            self.peer_fwd_cnt,
            self.rx_cnt,
            self.buf_alloc,
            self.fwd_cnt,
            self.last_fwd_cnt_sent,
            self.tx_buf.len(),
            self.peer_shut,
            self.local_shut,
            self.host_hup,
            self.deadline.map(|d| d.saturating_duration_since(Instant::now())),
            self.counters(),
        )
    }

    /// Resets for an abnormal reason, and says which: these end a transfer
    /// midway, so the VMM log must tell why.
    fn abort(&mut self, why: &str) {
        crate::devices::virtio::warn_limited!(
            "vsock: resetting connection (guest port {}, host port {}): {why}; {}",
            self.peer_port,
            self.local_port,
            self.counters()
        );
        self.reset();
    }

    /// A packet from the guest for this connection (already validated and
    /// matched by CIDs and ports).
    pub fn on_packet(&mut self, hdr: &VsockHeader, payload: &[u8], now: Instant) {
        if matches!(self.state, State::Closing | State::Dead) {
            if hdr.op == op::RST {
                self.state = State::Dead;
            }
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match (self.state, hdr.op) {
            (_, op::RST) => {
                if self.state == State::Established
                    && self.peer_shut != SHUTDOWN_BOTH
                    && self.local_shut != SHUTDOWN_BOTH
                {
                    // RST is how Linux answers a full SHUTDOWN (ours or
                    // after its own); an RST out of the blue ends a
                    // transfer midway.
                    crate::devices::virtio::warn_limited!(
                        "vsock: the guest reset the connection (guest port {}, host port {}); {}",
                        self.peer_port,
                        self.local_port,
                        self.counters()
                    );
                } else {
                    tracing::debug!(
                        "vsock: guest RST in state {:?} (guest port {}, host port {})",
                        self.state,
                        self.peer_port,
                        self.local_port
                    );
                }
                // Best effort: deliver what the guest already sent.
                let _ = self.flush();
                let _ = self.stream.shutdown(Shutdown::Both);
                self.state = State::Dead;
                return;
            }
            (State::LocalInit, op::RESPONSE) if !self.pending.request => {
                tracing::debug!(
                    "vsock: guest accepted (guest port {}, host port {})",
                    self.peer_port,
                    self.local_port
                );
                self.state = State::Established;
                self.deadline = None;
                // A fresh socket's send buffer is empty: a short write means
                // the host client is gone.
                let line = ok_line(self.local_port);
                if !matches!(self.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.reset();
                }
            }
            (State::Established, op::RW) => self.recv_data(payload),
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.pending.credit_update = true,
            (State::Established, op::SHUTDOWN) => self.recv_shutdown(hdr.flags, now),
            // REQUEST on a live connection, RESPONSE out of turn, data
            // before RESPONSE, anything else: protocol violation.
            (state, op) => self.abort(&format!("guest sent op {op} in state {state:?}")),
        }
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
    }

    fn recv_data(&mut self, payload: &[u8]) {
        if self.peer_shut & SHUTDOWN_SEND != 0 || self.host_hup {
            self.abort("guest data after shutdown or host hang-up");
            return;
        }
        if self.tx_buf.len() + payload.len() > self.buf_alloc as usize {
            self.abort(&format!(
                "guest ignored its credit: {} buffered + {} sent > {}",
                self.tx_buf.len(),
                payload.len(),
                self.buf_alloc
            ));
            return;
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &rest[n..];
                }
                Err(e) => {
                    self.abort(&format!("host stream write failed: {e}"));
                    return;
                }
            }
        }
        self.tx_buf.extend(rest);
        self.maybe_credit_update();
    }

    /// Writes buffered guest bytes to the host stream.
    fn flush(&mut self) -> Result<(), ()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front).map_err(|_| ())?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        Ok(())
    }

    /// Queues a CREDIT_UPDATE when the guest's view of our free space is
    /// low and we have freed some since we last told it.
    fn maybe_credit_update(&mut self) {
        let guest_tx_cnt = self.fwd_cnt + Wrapping(self.tx_buf.len() as u32);
        let used_in_guest_view = (guest_tx_cnt - self.last_fwd_cnt_sent).0;
        let free_in_guest_view = self.buf_alloc.saturating_sub(used_in_guest_view);
        if self.fwd_cnt != self.last_fwd_cnt_sent && free_in_guest_view < self.buf_alloc / 2 {
            self.pending.credit_update = true;
        }
    }

    fn recv_shutdown(&mut self, flags: u32, now: Instant) {
        tracing::debug!(
            "vsock: guest shutdown {flags:#x} (guest port {}, host port {}); {}",
            self.peer_port,
            self.local_port,
            self.counters()
        );
        self.peer_shut |= flags & SHUTDOWN_BOTH;
        if self.peer_shut & SHUTDOWN_RCV != 0 {
            self.rw_pending = false;
        }
        if self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.maybe_finish(now);
    }

    /// After both sides are done (or the guest fully closed and its data is
    /// delivered), the connection ends with an RST from us.
    fn maybe_finish(&mut self, now: Instant) {
        if self.state != State::Established {
            return;
        }
        if self.peer_shut == SHUTDOWN_BOTH {
            if self.tx_buf.is_empty() {
                self.reset();
            } else if self.deadline.is_none() {
                self.deadline = Some(now + CLOSE_TIMEOUT);
            }
        }
    }

    /// Readiness of the host stream.
    pub fn on_stream_event(&mut self, set: EventSet, now: Instant) {
        match self.state {
            State::LocalInit => {
                // The host client gave up before the guest answered.
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
                    self.reset();
                }
            }
            State::Established => {
                if set.contains(EventSet::ERROR) {
                    self.abort("host stream error");
                    return;
                }
                if set.contains(EventSet::OUT) {
                    if self.flush().is_err() {
                        self.abort("host stream write failed");
                        return;
                    }
                    if self.tx_buf.is_empty() && self.peer_shut & SHUTDOWN_SEND != 0 {
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                    self.maybe_credit_update();
                    self.maybe_finish(now);
                }
                if set.contains(EventSet::IN) && self.can_read() {
                    self.rw_pending = true;
                }
                if set.contains(EventSet::HANG_UP) {
                    // The host can't read anymore; drain what it wrote.
                    self.host_hup = true;
                    self.tx_buf = VecDeque::new();
                    if self.can_read() {
                        self.rw_pending = true;
                    } else {
                        self.local_shut = SHUTDOWN_BOTH;
                        self.pending.shutdown = true;
                    }
                }
            }
            State::Closing | State::Dead => {}
        }
    }

    /// Deadlines: connect timeout, close timeout.
    pub fn on_timer(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            if matches!(self.state, State::LocalInit | State::Established) {
                self.abort(&format!("timed out in state {:?}", self.state));
            }
        }
    }

    /// Whether [`Connection::next_rx`] has something for the guest.
    pub fn has_rx(&self) -> bool {
        if self.is_dead() {
            return false;
        }
        let p = self.pending;
        p.rst
            || p.request
            || p.response
            || p.credit_update
            || p.credit_request
            || p.shutdown
            || (self.rw_pending
                && self.can_read()
                && (self.peer_credit() > 0 || !self.credit_request_sent))
    }

    /// The epoll interest for the host stream; `None` = not watched.
    /// (HANG_UP and ERROR are always reported while watched.)
    pub fn interest(&self) -> Option<EventSet> {
        match self.state {
            State::LocalInit => Some(EventSet::empty()),
            State::Established if !self.host_hup => {
                let mut set = EventSet::empty();
                if self.can_read() && !self.rw_pending {
                    set |= EventSet::IN;
                }
                if !self.tx_buf.is_empty() {
                    set |= EventSet::OUT;
                }
                Some(set)
            }
            _ => None,
        }
    }

    fn header(&self, op: u16) -> VsockHeader {
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest; RW payload is read into `buf` (whose
    /// length is the room in the guest's buffer). Returns the header and the
    /// payload length.
    pub fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> Option<(VsockHeader, usize)> {
        let hdr = self.next_rx_inner(buf, now)?;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        // Every header carries our credit.
        self.pending.credit_update = false;
        Some(hdr)
    }

    fn next_rx_inner(&mut self, buf: &mut [u8], now: Instant) -> Option<(VsockHeader, usize)> {
        if self.pending.rst {
            self.pending = Pending::default();
            self.state = State::Dead;
            return Some((self.header(op::RST), 0));
        }
        if self.is_dead() {
            return None;
        }
        if self.pending.request {
            self.pending.request = false;
            return Some((self.header(op::REQUEST), 0));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some((self.header(op::RESPONSE), 0));
        }
        if self.pending.credit_update {
            return Some((self.header(op::CREDIT_UPDATE), 0));
        }
        if self.rw_pending && self.can_read() && !buf.is_empty() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_request_sent {
                    self.credit_request_sent = true;
                    return Some((self.header(op::CREDIT_REQUEST), 0));
                }
            } else {
                let n = credit.min(buf.len());
                match self.stream.read(&mut buf[..n]) {
                    Ok(0) => {
                        self.rw_pending = false;
                        self.local_shut |= if self.host_hup {
                            SHUTDOWN_BOTH
                        } else {
                            SHUTDOWN_SEND
                        };
                        self.pending.shutdown = true;
                    }
                    Ok(k) => {
                        self.rx_cnt += Wrapping(k as u32);
                        self.rw_packets += 1;
                        if k < SMALL_PACKET {
                            self.small_rw_packets += 1;
                        }
                        let mut h = self.header(op::RW);
                        h.len = k as u32;
                        return Some((h, k));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock && !self.host_hup => {
                        self.rw_pending = false;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.abort(&format!("host stream read failed: {e}"));
                        return self.next_rx_inner(buf, now);
                    }
                }
            }
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            if self.local_shut == SHUTDOWN_BOTH {
                // Wait for the guest's RST, but not forever.
                self.deadline = Some(now + CLOSE_TIMEOUT);
            }
            let mut h = self.header(op::SHUTDOWN);
            h.flags = self.local_shut;
            return Some((h, 0));
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            return Some((self.header(op::CREDIT_REQUEST), 0));
        }
        None
    }
}

/// Bytes queued in a unix stream socket: (readable by us, sent by us and
/// not yet read by the peer); -1 where the kernel would not say.
fn socket_queues(stream: &UnixStream) -> (i64, i64) {
    use std::os::fd::AsRawFd;
    let query = |req| {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD/TIOCOUTQ write one c_int through the valid
        // pointer; the fd is the live socket `stream` owns.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), req, &mut n) };
        if rc == 0 {
            i64::from(n)
        } else {
            -1
        }
    };
    (query(libc::FIONREAD), query(libc::TIOCOUTQ))
}

/// Writes as much as the non-blocking stream takes; `Ok(0)` when full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests;
