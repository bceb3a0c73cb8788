//! virtio-vsock device state: RX/TX/event queues, the guest CID config
//! space, and the glue between the queues and the [`Muxer`].

use std::io::Write;
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
    describe_queue, pop_chain, read_config_bytes, warn_limited, ActivateContext, ActivateError,
    VirtioDevice, INT_VRING, TYPE_VSOCK, VIRTIO_F_VERSION_1,
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
    /// A transport reset event waits for an event-queue buffer.
    transport_reset_pending: bool,
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
            transport_reset_pending: false,
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

    /// Sends a pending VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event
    /// queue, when the guest has a buffer there: the guest then drops every
    /// connection (they belonged to the VM the snapshot was taken from).
    pub(super) fn process_event_queue(&mut self) {
        if !self.transport_reset_pending || self.broken {
            return;
        }
        let Some(ctx) = self.active.as_mut() else {
            return;
        };
        let queue = &mut ctx.queues[EVQ];
        let chain = match pop_chain(queue, &ctx.mem) {
            Ok(Some(c)) => c,
            // No buffer yet: sent when the guest posts one.
            Ok(None) => return,
            Err(_) => return self.mark_broken("corrupted event queue"),
        };
        let head = chain.head_index();
        let written = chain
            .writer(&ctx.mem)
            .ok()
            .and_then(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).ok());
        let len = if written.is_some() { 4 } else { 0 };
        if written.is_none() {
            warn_limited!("vsock: event buffer too small for a transport reset");
        }
        if queue.add_used(&ctx.mem, head, len).is_err() {
            return self.mark_broken("cannot update event used ring");
        }
        self.transport_reset_pending = false;
        ctx.interrupt.trigger(INT_VRING);
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
        self.transport_reset_pending = false;
        self.muxer.reset();
        // The event loop unregisters the dropped connections' fds.
        let _ = self.state_evt.write(1);
    }

    fn active_queues(&self) -> Option<&[virtio_queue::Queue]> {
        self.active.as_ref().map(|ctx| ctx.queues.as_slice())
    }

    fn prepare_snapshot(&mut self) {
        // Host streams cannot be saved; the guest learns of it from the
        // transport reset sent after the snapshot.
        self.muxer.reset();
        let _ = self.state_evt.write(1);
    }

    fn after_snapshot(&mut self) {
        if self.active.is_some() {
            self.transport_reset_pending = true;
        }
        let _ = self.state_evt.write(1);
    }

    fn describe(&self) -> String {
        let Some(ctx) = &self.active else {
            return format!(
                "vsock cid {}: not active\n{}",
                self.cid,
                self.muxer.describe()
            );
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

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only vsock event (`le32 id`).
const EVENT_TRANSPORT_RESET: u32 = 0;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests;
