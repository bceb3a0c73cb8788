//! The state every virtio device shares, written once: the queue
//! notification eventfds and a wake-up eventfd, the activation (queues,
//! guest memory, interrupt line, acked features), the "device needs reset"
//! flag, draining a queue, and the part of a snapshot that is the same for
//! every device (ring positions, the broken flag).
//!
//! A device embeds one [`DeviceState`] and keeps only what is its own
//! (a disk, a muxer, a config space).

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, Events};
use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    describe_queue, pop_chain, warn_limited, ActivateContext, ActivateError, QueueBroken, INT_VRING,
};

/// What a device did with one descriptor chain handed to it by
/// [`DeviceState::drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Used, with this many bytes written into it; go on with the next.
    Used(u32),
    /// Used; a per-turn budget of the device ran out: stop, and have the
    /// event loop come back after the other devices had a turn.
    UsedThenYield(u32),
    /// Used; the device has nothing more to put on this queue.
    UsedThenStop(u32),
    /// Not used after all: the chain goes back to the available ring.
    GiveBack,
}

/// What [`DeviceState::drain`] does after a used chain.
enum Next {
    Continue,
    ComeBack,
    Stop,
}

/// Which shared eventfd an event-loop event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// The guest notified queue `n`.
    Queue(usize),
    /// The device was activated, reset or restored: catch up.
    Wake,
}

/// Where a running device stands in one queue's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    /// The next available-ring index the device reads.
    pub next_avail: u16,
    /// The next used-ring index the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx: bool,
}

impl QueuePosition {
    fn of(queue: &Queue) -> Self {
        QueuePosition {
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            event_idx: queue.event_idx_enabled(),
        }
    }

    /// Moves a freshly built `queue` to this position.
    pub fn apply(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_used);
        queue.set_event_idx(self.event_idx);
    }
}

/// The shared state of a running device, as a snapshot holds it (the
/// queue layout and features are the transport's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateSnapshot {
    /// Each queue's ring positions, in queue order.
    pub queues: Vec<QueuePosition>,
    /// The device had stopped on a corrupted queue (DEVICE_NEEDS_RESET).
    pub broken: bool,
}

/// A device's own state beyond the shared part, for the devices that keep
/// one across a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceOwnState {
    /// vsock: the next host port its muxer hands out. A clone goes on
    /// from there: the restored guest may still hold sockets (or send an
    /// RST, when their close timeout fires) for every port the source
    /// used, and a new connection on one of them would be reset.
    Vsock {
        /// The next host port for a host-initiated connection.
        next_host_port: u32,
    },
}

/// The state every virtio device shares.
pub struct DeviceState {
    name: &'static str,
    queue_count: usize,
    queue_evts: Vec<EventFd>,
    /// Signalled on activation, reset and restore so the event loop catches
    /// up (serves requests queued before activation, drops closed fds).
    wake_evt: EventFd,
    active: Option<ActivateContext>,
    broken: bool,
}

impl DeviceState {
    /// An inactive device called `name` in logs, with `queue_count` queues.
    pub fn new(name: &'static str, queue_count: usize) -> std::io::Result<Self> {
        let evt = || EventFd::new(EFD_NONBLOCK);
        Ok(DeviceState {
            name,
            queue_count,
            queue_evts: (0..queue_count).map(|_| evt()).collect::<Result<_, _>>()?,
            wake_evt: evt()?,
            active: None,
            broken: false,
        })
    }

    /// One eventfd per queue, signalled when the guest notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Whether the driver activated the device (and no reset since).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the device stopped on a corrupted queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Features the driver accepted, while active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|ctx| ctx.acked_features)
    }

    /// Takes the queues the driver set up and wakes the event loop.
    pub fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != self.queue_count {
            return Err(ActivateError::QueueCount {
                expected: self.queue_count,
                got: ctx.queues.len(),
            });
        }
        self.active = Some(ctx);
        self.broken = false;
        self.wake();
        Ok(())
    }

    /// Drops the queues and the broken flag (device reset) and wakes the
    /// event loop.
    pub fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        self.wake();
    }

    /// Has the event loop come back to the device ([`StateEvent::Wake`]).
    pub fn wake(&self) {
        let _ = self.wake_evt.write(1);
    }

    /// Stops the device on a corrupted queue and tells the driver
    /// (DEVICE_NEEDS_RESET).
    pub fn mark_broken(&mut self, what: &str) {
        warn_limited!("{}: {what}; device needs reset", self.name);
        self.broken = true;
        if let Some(ctx) = &self.active {
            ctx.interrupt.signal_needs_reset();
        }
    }

    /// Registers the queue and wake eventfds with the event loop.
    pub fn register(&self, ops: &mut EventOps) {
        for evt in self.queue_evts.iter().chain([&self.wake_evt]) {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!("{}: cannot watch eventfd: {e}", self.name);
            }
        }
    }

    /// Which shared eventfd `fd` is, with its count consumed; `None` for a
    /// fd of the device's own.
    pub fn take_event(&self, fd: RawFd) -> Option<StateEvent> {
        if let Some(i) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_evts[i].read();
            return Some(StateEvent::Queue(i));
        }
        if fd == self.wake_evt.as_raw_fd() {
            let _ = self.wake_evt.read();
            return Some(StateEvent::Wake);
        }
        None
    }

    /// Hands each available chain of queue `index` to `serve` and puts it
    /// on the used ring, at most one queue's worth per call (then the queue
    /// eventfd is signalled again so the event loop comes back after the
    /// other devices had a turn); raises the interrupt once if anything was
    /// used. A corrupted ring marks the device broken. Nothing happens
    /// while the device is inactive; `Err` while it is broken.
    pub fn drain<F>(&mut self, index: usize, mut serve: F) -> Result<(), QueueBroken>
    where
        F: FnMut(DescriptorChain<&GuestMemoryMmap>, &GuestMemoryMmap) -> Served,
    {
        if self.broken {
            return Err(QueueBroken);
        }
        let Some(ctx) = self.active.as_mut() else {
            return Ok(());
        };
        let queue = &mut ctx.queues[index];
        let mut budget = queue.size();
        let mut used = false;
        let mut broken = None;
        loop {
            if budget == 0 {
                let _ = self.queue_evts[index].write(1);
                break;
            }
            budget -= 1;
            let chain = match pop_chain(queue, &ctx.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(_) => {
                    broken = Some("is corrupted");
                    break;
                }
            };
            let head = chain.head_index();
            let (len, next) = match serve(chain, &ctx.mem) {
                Served::Used(len) => (len, Next::Continue),
                Served::UsedThenYield(len) => (len, Next::ComeBack),
                Served::UsedThenStop(len) => (len, Next::Stop),
                Served::GiveBack => {
                    queue.go_to_previous_position();
                    break;
                }
            };
            if queue.add_used(&ctx.mem, head, len).is_err() {
                broken = Some("has a used ring the device cannot update");
                break;
            }
            used = true;
            match next {
                Next::Continue => {}
                Next::ComeBack => {
                    let _ = self.queue_evts[index].write(1);
                    break;
                }
                Next::Stop => break,
            }
        }
        if used {
            ctx.interrupt.trigger(INT_VRING);
        }
        match broken {
            Some(what) => {
                self.mark_broken(&format!("queue {index} {what}"));
                Err(QueueBroken)
            }
            None => Ok(()),
        }
    }

    /// The shared state of a running device, for a snapshot; `None` while
    /// inactive.
    pub fn save(&self) -> Option<DeviceStateSnapshot> {
        self.active.as_ref().map(|ctx| DeviceStateSnapshot {
            queues: ctx.queues.iter().map(QueuePosition::of).collect(),
            broken: self.broken,
        })
    }

    /// After the device was activated on a snapshot's rings: takes back the
    /// rest of its shared state.
    pub fn restore(&mut self, snapshot: &DeviceStateSnapshot) {
        self.broken = snapshot.broken;
    }

    /// The interrupt status and each queue as both sides see it, for debug
    /// dumps; `names` labels the queues.
    pub fn describe(&self, names: &[&str]) -> String {
        let Some(ctx) = &self.active else {
            return "not active".into();
        };
        let mut s = format!(
            "broken {} interrupt status {:#x}",
            self.broken,
            ctx.interrupt.status()
        );
        for (i, queue) in ctx.queues.iter().enumerate() {
            let name = names.get(i).copied().unwrap_or("q");
            s.push_str(&format!("\n  {name}: {}", describe_queue(queue, &ctx.mem)));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};
    use crate::devices::virtio::{Interrupt, INT_CONFIG};

    fn active(mem: &GuestMemoryMmap, tq: &TestQueue) -> (DeviceState, Arc<Interrupt>) {
        let mut state = DeviceState::new("test", 1).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        state
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![tq.queue()],
                interrupt: irq.clone(),
                acked_features: 7,
            })
            .unwrap();
        (state, irq)
    }

    #[test]
    fn activation_rules_and_reset() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 0x1000, 8);
        let mut state = DeviceState::new("test", 1).unwrap();
        assert!(!state.is_active());
        assert_eq!(state.drain(0, |_, _| unreachable!()), Ok(()));
        let irq = Arc::new(Interrupt::new().unwrap());
        let ctx = |queues| ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt: irq.clone(),
            acked_features: 3,
        };
        assert_eq!(
            state.activate(ctx(vec![])),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        );
        state.activate(ctx(vec![tq.queue()])).unwrap();
        assert_eq!(state.acked_features(), Some(3));
        assert_eq!(
            state.take_event(state.wake_evt.as_raw_fd()),
            Some(StateEvent::Wake)
        );
        assert_eq!(
            state.activate(ctx(vec![tq.queue()])),
            Err(ActivateError::AlreadyActive)
        );
        state.reset();
        assert!(!state.is_active());
        assert_eq!(state.wake_evt.read().unwrap(), 1, "reset wakes the loop");
        let q0 = state.queue_evts[0].as_raw_fd();
        state.queue_evts[0].write(1).unwrap();
        assert_eq!(state.take_event(q0), Some(StateEvent::Queue(0)));
        assert!(state.queue_evts[0].read().is_err(), "count consumed");
        assert_eq!(state.take_event(-1), None);
    }

    #[test]
    fn drain_uses_every_chain_and_raises_one_interrupt() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 8);
        let (mut state, irq) = active(&mem, &tq);
        let a = tq.add_chain(&mem, &[(0x10_0000, 16, true)]);
        let b = tq.add_chain(&mem, &[(0x10_1000, 16, true)]);
        let mut seen = 0;
        state
            .drain(0, |_, _| {
                seen += 1;
                Served::Used(seen)
            })
            .unwrap();
        assert_eq!(tq.take_used(&mem), vec![(a, 1), (b, 2)]);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        assert_eq!(irq.status(), INT_VRING);
        // Nothing available: no interrupt.
        irq.ack(INT_VRING);
        state.drain(0, |_, _| unreachable!()).unwrap();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn drain_gives_back_yields_and_stops() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 8);
        let (mut state, _irq) = active(&mem, &tq);
        for i in 0..4u64 {
            tq.add_chain(&mem, &[(0x10_0000 + 0x1000 * i, 16, true)]);
        }
        state.drain(0, |_, _| Served::GiveBack).unwrap();
        assert!(tq.take_used(&mem).is_empty(), "given back");
        state.drain(0, |_, _| Served::UsedThenStop(0)).unwrap();
        assert_eq!(tq.take_used(&mem).len(), 1);
        assert!(
            state.queue_evts[0].read().is_err(),
            "a stop does not come back"
        );
        state.drain(0, |_, _| Served::UsedThenYield(0)).unwrap();
        assert_eq!(tq.take_used(&mem).len(), 1);
        assert_eq!(state.queue_evts[0].read().unwrap(), 1, "a yield comes back");
        state.drain(0, |_, _| Served::Used(0)).unwrap();
        assert_eq!(tq.take_used(&mem).len(), 2);
    }

    #[test]
    fn drain_takes_at_most_a_queue_per_turn() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 4);
        let (mut state, _irq) = active(&mem, &tq);
        for _ in 0..4 {
            tq.add_chain(&mem, &[(0x10_0000, 16, true)]);
        }
        let mut n = 0;
        state
            .drain(0, |_, _| {
                n += 1;
                // The driver posts more as fast as the device uses them.
                tq.publish(&mem, 0);
                Served::Used(0)
            })
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(state.queue_evts[0].read().unwrap(), 1, "comes back later");
    }

    #[test]
    fn corrupted_ring_breaks_the_device_until_reset() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 0x1000, 8);
        let (mut state, irq) = active(&mem, &tq);
        tq.set_avail_idx(&mem, 1000);
        assert_eq!(state.drain(0, |_, _| unreachable!()), Err(QueueBroken));
        assert!(state.is_broken());
        assert!(irq.needs_reset());
        assert_ne!(irq.status() & INT_CONFIG, 0);
        assert_eq!(state.drain(0, |_, _| unreachable!()), Err(QueueBroken));
        assert!(state.save().unwrap().broken);
        state.reset();
        assert!(!state.is_broken());
    }

    #[test]
    fn save_and_restore_positions_and_broken() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 8);
        let (mut state, irq) = active(&mem, &tq);
        for _ in 0..3 {
            tq.add_chain(&mem, &[(0x10_0000, 16, true)]);
        }
        state.drain(0, |_, _| Served::Used(0)).unwrap();
        let saved = state.save().unwrap();
        assert_eq!(
            saved.queues,
            vec![QueuePosition {
                next_avail: 3,
                next_used: 3,
                event_idx: false
            }]
        );
        let mut q = tq.queue();
        saved.queues[0].apply(&mut q);
        let mut fresh = DeviceState::new("test", 1).unwrap();
        fresh
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![q],
                interrupt: irq,
                acked_features: 7,
            })
            .unwrap();
        let broken = DeviceStateSnapshot {
            broken: true,
            ..saved.clone()
        };
        fresh.restore(&broken);
        assert_eq!(fresh.save(), Some(broken));
        assert!(DeviceState::new("test", 1).unwrap().save().is_none());
    }
}
