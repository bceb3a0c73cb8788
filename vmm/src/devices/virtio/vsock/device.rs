//! virtio-vsock device state: RX/TX/event queues, the guest CID config
//! space, and the glue between the queues and the [`Muxer`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::muxer::Muxer;
use super::packet::{read_tx, RxBuffer};
use super::{
    VsockError, DEFAULT_CONNECT_TIMEOUT, EVQ, HOST_CID, MAX_PKT_PAYLOAD, QUEUE_SIZE, RXQ, TXQ,
};
use crate::devices::virtio::{
    read_config_bytes, warn_limited, DeviceOwnState, DeviceState, Served, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};

/// A virtio socket device whose host side is unix sockets.
pub struct Vsock {
    cid: u64,
    pub(super) state: DeviceState,
    pub(super) muxer: Muxer,
    scratch: Vec<u8>,
    /// A transport reset event waits for an event-queue buffer.
    transport_reset_pending: bool,
    /// When the last transport reset event went to the guest, until the
    /// guest has handled it (it posts its event buffer again and
    /// notifies). Meanwhile nothing goes on the RX queue: the guest resets
    /// every connection it has when it handles the event, so a connection
    /// set up before that would die with the old ones.
    reset_sent_at: Option<Instant>,
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
        Ok(Vsock {
            cid: guest_cid,
            state: DeviceState::new("vsock", 3).map_err(VsockError::EventFd)?,
            muxer: Muxer::new(guest_cid, uds_path.into(), connect_timeout)?,
            scratch: vec![0; MAX_PKT_PAYLOAD],
            transport_reset_pending: false,
            reset_sent_at: None,
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

    /// Handles the guest's TX queue, then answers on the RX queue.
    pub(super) fn process_tx(&mut self, now: Instant) {
        let (muxer, scratch) = (&mut self.muxer, &mut self.scratch);
        let drained = self.state.drain(TXQ, |chain, mem| {
            match read_tx(chain, mem, scratch) {
                Ok(hdr) => muxer.on_guest_packet(&hdr, &scratch[..hdr.len as usize], now),
                Err(e) => warn_limited!("vsock: bad TX packet: {e}"),
            }
            Served::Used(0)
        });
        if drained.is_ok() {
            self.process_rx(now);
        }
    }

    /// Sends a pending VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event
    /// queue, when the guest has a buffer there: the guest then drops every
    /// connection (they belonged to the VM the snapshot was taken from).
    /// Without a buffer it is sent when the guest posts one.
    pub(super) fn process_event_queue(&mut self, now: Instant) {
        if !self.transport_reset_pending {
            return;
        }
        let (pending, sent_at) = (&mut self.transport_reset_pending, &mut self.reset_sent_at);
        let _ = self.state.drain(EVQ, |chain, mem| {
            let written = chain
                .writer(mem)
                .ok()
                .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok());
            if written.is_none() {
                warn_limited!("vsock: event buffer too small for a transport reset");
            } else {
                *sent_at = Some(now);
            }
            *pending = false;
            Served::UsedThenStop(if written.is_some() { 4 } else { 0 })
        });
    }

    /// The guest notified the event queue: with no reset left to send, it
    /// posted its buffer again after handling the last one, so RX opens.
    pub(super) fn on_event_queue_notify(&mut self, now: Instant) {
        if self.transport_reset_pending {
            self.process_event_queue(now);
        } else if self.reset_sent_at.take().is_some() {
            self.process_rx(now);
        }
    }

    /// Whether RX waits for the guest to handle a transport reset (at most
    /// [`RESET_HANDLED_WAIT`], should its notification never come).
    fn rx_held(&mut self, now: Instant) -> bool {
        match self.reset_sent_at {
            Some(at) if now.saturating_duration_since(at) < RESET_HANDLED_WAIT => true,
            Some(_) => {
                warn_limited!("vsock: the guest did not confirm the transport reset; RX goes on");
                self.reset_sent_at = None;
                false
            }
            None => false,
        }
    }

    /// Moves packets from the muxer into the guest's RX buffers.
    pub(super) fn process_rx(&mut self, now: Instant) {
        if !self.muxer.has_rx() || self.rx_held(now) {
            return;
        }
        let (muxer, scratch) = (&mut self.muxer, &mut self.scratch);
        let _ = self.state.drain(RXQ, |chain, mem| {
            if !muxer.has_rx() {
                return Served::GiveBack;
            }
            let rx = match RxBuffer::new(chain, mem) {
                Ok(rx) => rx,
                Err(e) => {
                    warn_limited!("vsock: bad RX buffer: {e}");
                    return Served::Used(0);
                }
            };
            let cap = rx.payload_capacity();
            match muxer.next_rx(&mut scratch[..cap], now) {
                Some((hdr, n)) => Served::Used(rx.write(&hdr, &scratch[..n]).unwrap_or_else(|e| {
                    warn_limited!("vsock: packet lost writing RX buffer: {e}");
                    0
                })),
                // Nothing after all: the guest keeps its buffer.
                None => Served::GiveBack,
            }
        });
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

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_limited!("vsock: guest wrote read-only config space");
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn reset(&mut self) {
        self.transport_reset_pending = false;
        self.reset_sent_at = None;
        self.muxer.reset();
        // Wakes the event loop, which unregisters the dropped connections' fds.
        self.state.reset();
    }

    fn prepare_snapshot(&mut self) {
        // Host streams cannot be saved; the guest learns of it from the
        // transport reset sent after the snapshot.
        self.muxer.reset();
        self.state.wake();
    }

    fn after_snapshot(&mut self) {
        if self.state.is_active() {
            self.transport_reset_pending = true;
        }
        self.state.wake();
    }

    fn save_own(&self) -> Option<DeviceOwnState> {
        Some(DeviceOwnState::Vsock {
            next_host_port: self.muxer.next_host_port(),
        })
    }

    fn restore_own(&mut self, state: &DeviceOwnState) -> bool {
        match state {
            DeviceOwnState::Vsock { next_host_port } => {
                self.muxer.continue_host_ports_from(*next_host_port);
                true
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "vsock cid {}: {}\n{}",
            self.cid,
            self.state.describe(&["rxq", "txq", "evq"]),
            self.muxer.describe()
        )
    }
}

/// Longest RX waits for the guest to confirm it handled a transport reset
/// (below the host's connect timeout, so a held connection still starts).
const RESET_HANDLED_WAIT: Duration = Duration::from_secs(1);

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only vsock event (`le32 id`).
const EVENT_TRANSPORT_RESET: u32 = 0;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests;
