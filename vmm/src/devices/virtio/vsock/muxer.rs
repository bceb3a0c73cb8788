//! The host side of the vsock device: the unix listener, host clients
//! still sending their CONNECT line, and the map of live connections.
//!
//! The muxer knows nothing about virtqueues: the device feeds it guest
//! packets ([`Muxer::on_guest_packet`]) and pulls packets for the guest
//! ([`Muxer::next_rx`]). It doesn't own the epoll set either: it records the
//! changes it needs ([`Muxer::take_epoll_ops`]) and keeps streams it closes
//! open until those are applied ([`Muxer::bury`]), so an fd is never
//! reused while still registered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::Connection;
use super::packet::{PacketError, VsockHeader};
use super::unix::{connect_nonblocking, push_connect_byte};
use super::{
    op, VsockError, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PENDING_HOST, MAX_PENDING_RST,
};
use crate::devices::virtio::warn_limited;

/// How often deadlines are checked while any exist.
const TICK: Duration = Duration::from_millis(100);
/// Most connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 16;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A change to the epoll set the event handler must apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollOp {
    /// Start watching.
    Add(RawFd, EventSet),
    /// Change what is watched.
    Modify(RawFd, EventSet),
    /// Stop watching.
    Remove(RawFd),
}

/// (local port, peer port): a connection's identity, CIDs being fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// Host-side connection multiplexer.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    connect_timeout: Duration,
    pending: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// What each fd is registered for in epoll right now.
    registered: HashMap<RawFd, EventSet>,
    rx_queue: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    rst_queue: VecDeque<VsockHeader>,
    local_ports: HashSet<u32>,
    next_local_port: u32,
    epoll_ops: Vec<EpollOp>,
    graveyard: Vec<UnixStream>,
}

impl Muxer {
    /// Listens on `uds_path` (a stale socket file there is replaced).
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        connect_timeout: Duration,
    ) -> Result<Self, VsockError> {
        let bind_err = |source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        };
        if std::fs::symlink_metadata(&uds_path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&uds_path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(&uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Muxer {
            guest_cid,
            listener,
            timer: TimerFd::new().map_err(|e| VsockError::EventFd(e.into()))?,
            timer_armed: false,
            connect_timeout,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            registered: HashMap::new(),
            rx_queue: VecDeque::new(),
            rx_queued: HashSet::new(),
            rst_queue: VecDeque::new(),
            local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            epoll_ops: Vec::new(),
            graveyard: Vec::new(),
            uds_path,
        })
    }

    /// The host socket path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The fds to watch for [`EventSet::IN`] from the start.
    pub fn static_fds(&self) -> [RawFd; 2] {
        [self.listener.as_raw_fd(), self.timer.as_raw_fd()]
    }

    /// Pending epoll changes, oldest first.
    pub fn take_epoll_ops(&mut self) -> Vec<EpollOp> {
        std::mem::take(&mut self.epoll_ops)
    }

    /// Closes streams whose fds left epoll (call after applying the ops).
    pub fn bury(&mut self) {
        self.graveyard.clear();
    }

    /// Live connections.
    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Readiness on one of the muxer's fds.
    pub fn handle_event(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        if fd == self.listener.as_raw_fd() {
            self.accept(now);
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.sweep(now);
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd, now);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_stream_event(set, now);
            }
            self.sync(key);
        } else {
            warn_limited!("vsock: event on unknown fd {fd}");
        }
    }

    fn watch(&mut self, fd: RawFd, want: Option<EventSet>) {
        match (self.registered.get(&fd).copied(), want) {
            (None, Some(set)) => {
                self.epoll_ops.push(EpollOp::Add(fd, set));
                self.registered.insert(fd, set);
            }
            (Some(old), Some(set)) if old != set => {
                self.epoll_ops.push(EpollOp::Modify(fd, set));
                self.registered.insert(fd, set);
            }
            (Some(_), None) => {
                self.epoll_ops.push(EpollOp::Remove(fd));
                self.registered.remove(&fd);
            }
            _ => {}
        }
    }

    fn ensure_timer(&mut self) {
        if !self.timer_armed {
            match self.timer.reset(TICK, Some(TICK)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => warn_limited!("vsock: cannot arm timer: {e}"),
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn_limited!("vsock: accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_HOST || self.conns.len() >= MAX_CONNECTIONS {
                warn_limited!("vsock: too many host connections, refusing one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.pending.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline: now + self.connect_timeout,
                },
            );
            self.watch(fd, Some(EventSet::IN));
            self.ensure_timer();
        }
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if let Some(p) = self.pending.remove(&fd) {
            self.watch(fd, None);
            self.graveyard.push(p.stream);
        }
    }

    /// Reads the CONNECT line one byte at a time, so that bytes after the
    /// newline stay in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd, now: Instant) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match p.stream.read(&mut b) {
                Ok(1) => match push_connect_byte(&mut p.line, b[0]) {
                    Ok(Some(port)) => break port,
                    Ok(None) => continue,
                    Err(e) => {
                        warn_limited!("vsock: host client refused: {e}");
                        return self.drop_pending(fd);
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EOF or error before the line was complete.
                _ => return self.drop_pending(fd),
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Some(local_port) = self.alloc_local_port() else {
            self.watch(fd, None);
            self.graveyard.push(p.stream);
            return;
        };
        tracing::debug!(
            "vsock: host client (fd {fd}) connects to guest port {port}, host port {local_port}"
        );
        let conn = Connection::new_local(
            p.stream,
            self.guest_cid,
            local_port,
            port,
            now,
            self.connect_timeout,
        );
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.sync(key);
    }

    /// The next host port a host-initiated connection gets.
    pub fn next_host_port(&self) -> u32 {
        self.next_local_port
    }

    /// Hands out host ports from `port` on (a restored clone goes on where
    /// its snapshot left off; see [`DeviceOwnState::Vsock`]). A port below
    /// the host range starts it over.
    ///
    /// [`DeviceOwnState::Vsock`]: crate::devices::virtio::DeviceOwnState::Vsock
    pub fn continue_host_ports_from(&mut self, port: u32) {
        self.next_local_port = port.max(FIRST_LOCAL_PORT);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if self.local_ports.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Brings epoll interest, the RX queue and the timer in line with a
    /// connection's state, and drops it if it is dead.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        if conn.is_dead() {
            tracing::debug!("vsock: connection {key:?} (fd {fd}) closed");
            let conn = self.conns.remove(&key).expect("checked above");
            if conn.host_initiated() {
                self.local_ports.remove(&key.local_port);
            }
            self.by_fd.remove(&fd);
            self.rx_queued.remove(&key);
            self.watch(fd, None);
            self.graveyard.push(conn.into_stream());
            return;
        }
        let (interest, has_rx, deadline) = (conn.interest(), conn.has_rx(), conn.deadline());
        self.watch(fd, interest);
        if has_rx && self.rx_queued.insert(key) {
            self.rx_queue.push_back(key);
        }
        if deadline.is_some() {
            self.ensure_timer();
        }
    }

    fn sweep(&mut self, now: Instant) {
        let expired: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in expired {
            warn_limited!("vsock: host client sent no CONNECT line in time");
            self.drop_pending(fd);
        }
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some())
            .map(|(&k, _)| k)
            .collect();
        let mut any_deadline = !self.pending.is_empty();
        for key in keys {
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_timer(now);
                any_deadline |= c.deadline().is_some();
            }
            self.sync(key);
        }
        if !any_deadline && self.timer_armed {
            match self.timer.clear() {
                Ok(()) => self.timer_armed = false,
                Err(e) => warn_limited!("vsock: cannot disarm timer: {e}"),
            }
        }
    }

    fn queue_rst(&mut self, to: &VsockHeader) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            warn_limited!("vsock: RST queue full, dropping one");
            return;
        }
        let mut rst = to.reply(op::RST);
        rst.src_cid = HOST_CID;
        rst.dst_cid = self.guest_cid;
        self.rst_queue.push_back(rst);
    }

    /// A packet the guest sent (header parsed, payload bounded).
    pub fn on_guest_packet(&mut self, hdr: &VsockHeader, payload: &[u8], now: Instant) {
        if let Err(e) = hdr.validate(self.guest_cid) {
            warn_limited!("vsock: dropping guest packet: {e}");
            if matches!(e, PacketError::BadType(_) | PacketError::BadOp(_)) && hdr.op != op::RST {
                self.queue_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_packet(hdr, payload, now);
            self.sync(key);
            return;
        }
        match hdr.op {
            op::REQUEST => self.connect_to_host(hdr, key),
            op::RST => {}
            _ => self.queue_rst(hdr),
        }
    }

    /// Forwards a guest connection to `<uds_path>_<port>`.
    fn connect_to_host(&mut self, hdr: &VsockHeader, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn_limited!("vsock: too many connections, refusing guest REQUEST");
            return self.queue_rst(hdr);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                self.by_fd.insert(fd, key);
                self.conns.insert(key, Connection::new_peer(stream, hdr));
                self.sync(key);
            }
            Err(e) => {
                // Nothing listening is normal (a port the host does not
                // serve); anything else is worth a (rate-limited) line.
                if e.kind() != std::io::ErrorKind::NotFound
                    && e.kind() != std::io::ErrorKind::ConnectionRefused
                {
                    warn_limited!(
                        "vsock: guest connection to {}: {e}",
                        Path::new(&path).display()
                    );
                }
                self.queue_rst(hdr)
            }
        }
    }

    /// Whether [`Muxer::next_rx`] may have something.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    /// The next packet for the guest, RW payload read into `buf` (whose
    /// length is the room in the guest buffer). Connections take turns.
    pub fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> Option<(VsockHeader, usize)> {
        if let Some(rst) = self.rst_queue.pop_front() {
            return Some((rst, 0));
        }
        for _ in 0..self.rx_queue.len() {
            let key = self.rx_queue.pop_front()?;
            self.rx_queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = conn.next_rx(buf, now);
            self.sync(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// The muxer's state for a debug dump: queued work and every
    /// connection with its epoll interest.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "  muxer: {} pending host clients, {} connections, rx queue {:?}, {} queued RSTs, timer armed {}\n",
            self.pending.len(),
            self.conns.len(),
            self.rx_queue,
            self.rst_queue.len(),
            self.timer_armed,
        );
        for (key, conn) in &self.conns {
            let fd = conn.stream().as_raw_fd();
            s.push_str(&format!(
                "  conn {key:?} fd {fd} epoll {:?}: {}\n",
                self.registered.get(&fd),
                conn.describe()
            ));
        }
        s
    }

    /// Device reset: every connection goes (host streams close); host
    /// clients still sending their CONNECT line stay.
    pub fn reset(&mut self) {
        if !self.conns.is_empty() {
            tracing::info!(
                "vsock: device reset closes {} connection(s)",
                self.conns.len()
            );
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(conn) = self.conns.remove(&key) {
                let fd = conn.stream().as_raw_fd();
                self.by_fd.remove(&fd);
                self.watch(fd, None);
                self.graveyard.push(conn.into_stream());
            }
        }
        self.rx_queue.clear();
        self.rx_queued.clear();
        self.rst_queue.clear();
        self.local_ports.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::io::Write;

    use super::*;
    use crate::devices::virtio::vsock::TYPE_STREAM;

    pub(crate) fn temp_path(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!("kiln-vsock-{tag}-{}-{n}.sock", std::process::id()))
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn pump_events(m: &mut Muxer, now: Instant) {
        // Without an epoll set: poke every fd the muxer watches.
        for _ in 0..4 {
            let fds: Vec<RawFd> = std::iter::once(m.listener.as_raw_fd())
                .chain(m.registered.keys().copied())
                .collect();
            for fd in fds {
                m.handle_event(fd, EventSet::IN, now);
            }
            m.take_epoll_ops();
            m.bury();
        }
    }

    fn drain(m: &mut Muxer) -> Vec<VsockHeader> {
        let mut buf = vec![0u8; 4096];
        std::iter::from_fn(|| m.next_rx(&mut buf, Instant::now()).map(|(h, _)| h)).collect()
    }

    #[test]
    fn host_connect_line_flow_and_limits() {
        let path = temp_path("m1");
        let mut m = Muxer::new(3, path.clone(), Duration::from_secs(5)).unwrap();
        let now = Instant::now();
        let mut good = UnixStream::connect(&path).unwrap();
        let mut bad = UnixStream::connect(&path).unwrap();
        let mut slow = UnixStream::connect(&path).unwrap();
        good.write_all(b"CONNECT 52\n").unwrap();
        bad.write_all(b"CONNECT fifty\n").unwrap();
        slow.write_all(b"CONN").unwrap();
        pump_events(&mut m, now);
        let pkts = drain(&mut m);
        assert_eq!(pkts.len(), 1);
        assert_eq!(
            (pkts[0].op, pkts[0].dst_port, pkts[0].dst_cid),
            (op::REQUEST, 52, 3)
        );
        assert!(pkts[0].src_port >= FIRST_LOCAL_PORT);
        // The bad client is closed.
        bad.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(bad.read(&mut [0u8; 8]).unwrap(), 0);
        // The slow one times out.
        assert_eq!(m.pending.len(), 1);
        m.sweep(now + Duration::from_secs(6));
        assert!(m.pending.is_empty());
        // And the good one too, since the guest never answered: RST goes out.
        assert_eq!(
            drain(&mut m).iter().map(|h| h.op).collect::<Vec<_>>(),
            vec![op::RST]
        );
        assert_eq!(m.connection_count(), 0);
        good.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(good.read(&mut [0u8; 8]).unwrap(), 0);
        drop(m);
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn too_many_pending_host_clients_are_refused() {
        let path = temp_path("m2");
        let mut m = Muxer::new(3, path.clone(), Duration::from_secs(5)).unwrap();
        let clients: Vec<_> = (0..MAX_PENDING_HOST + 5)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        pump_events(&mut m, Instant::now());
        assert_eq!(m.pending.len(), MAX_PENDING_HOST);
        drop(clients);
    }

    #[test]
    fn guest_packets_for_unknown_connections() {
        let path = temp_path("m3");
        let mut m = Muxer::new(3, path, Duration::from_secs(5)).unwrap();
        let now = Instant::now();
        // Nobody listens on <path>_99: REQUEST refused with RST.
        m.on_guest_packet(&guest(op::REQUEST, 1000, 99), &[], now);
        // RW for no connection: RST. RST for no connection: nothing.
        m.on_guest_packet(&guest(op::RW, 1001, 99), b"x", now);
        m.on_guest_packet(&guest(op::RST, 1002, 99), &[], now);
        // Wrong CIDs: dropped silently; bad op/type: RST.
        let mut spoof = guest(op::REQUEST, 1003, 99);
        spoof.src_cid = 7;
        m.on_guest_packet(&spoof, &[], now);
        let mut bad_type = guest(op::REQUEST, 1004, 99);
        bad_type.type_ = 2;
        m.on_guest_packet(&bad_type, &[], now);
        m.on_guest_packet(&guest(42, 1005, 99), &[], now);
        let pkts = drain(&mut m);
        let got: Vec<_> = pkts
            .iter()
            .map(|h| (h.op, h.dst_port, h.src_port, h.dst_cid))
            .collect();
        assert_eq!(
            got,
            vec![
                (op::RST, 1000, 99, 3),
                (op::RST, 1001, 99, 3),
                (op::RST, 1004, 99, 3),
                (op::RST, 1005, 99, 3)
            ]
        );
        // The RST backlog is bounded.
        for i in 0..(MAX_PENDING_RST as u32 + 50) {
            m.on_guest_packet(&guest(op::RW, i, 99), b"x", now);
        }
        assert_eq!(m.rst_queue.len(), MAX_PENDING_RST);
    }

    #[test]
    fn guest_connects_to_host_listener() {
        let path = temp_path("m4");
        let mut m = Muxer::new(3, path.clone(), Duration::from_secs(5)).unwrap();
        let mut lpath = path.into_os_string();
        lpath.push("_700");
        let listener = UnixListener::bind(&lpath).unwrap();
        let now = Instant::now();
        m.on_guest_packet(&guest(op::REQUEST, 5000, 700), &[], now);
        let pkts = drain(&mut m);
        assert_eq!(pkts.len(), 1);
        assert_eq!(
            (pkts[0].op, pkts[0].src_port, pkts[0].dst_port),
            (op::RESPONSE, 700, 5000)
        );
        let (mut host, _) = listener.accept().unwrap();
        m.on_guest_packet(&guest(op::RW, 5000, 700), b"hi host", now);
        let mut got = [0u8; 7];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi host");
        // A second REQUEST on the same ports is a violation: RST.
        m.on_guest_packet(&guest(op::REQUEST, 5000, 700), &[], now);
        assert_eq!(
            drain(&mut m).iter().map(|h| h.op).collect::<Vec<_>>(),
            vec![op::RST]
        );
        assert_eq!(m.connection_count(), 0);
        let _ = std::fs::remove_file(&lpath);
    }

    #[test]
    fn reset_drops_connections_and_unwatches_fds() {
        let path = temp_path("m5");
        let mut m = Muxer::new(3, path.clone(), Duration::from_secs(5)).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"CONNECT 1\n").unwrap();
        pump_events(&mut m, Instant::now());
        assert_eq!(m.connection_count(), 1);
        m.reset();
        assert_eq!(m.connection_count(), 0);
        assert!(!m.has_rx());
        let ops = m.take_epoll_ops();
        assert!(matches!(ops.as_slice(), [EpollOp::Remove(_)]));
        m.bury();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
    }
}
