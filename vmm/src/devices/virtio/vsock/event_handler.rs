//! virtio-vsock on the event loop: queue notifications, activation, and the
//! muxer's unix sockets and timer.

use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::muxer::EpollOp;
use super::{Vsock, RXQ, TXQ};
use crate::devices::virtio::{warn_limited, StateEvent};

impl Vsock {
    fn apply_epoll_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.take_epoll_ops() {
            let res = match op {
                EpollOp::Add(fd, set) => ops.add(Events::new_raw(fd, set)),
                EpollOp::Modify(fd, set) => ops.modify(Events::new_raw(fd, set)),
                EpollOp::Remove(fd) => ops.remove(Events::empty_raw(fd)),
            };
            if let Err(e) = res {
                warn_limited!("vsock: epoll {op:?} failed: {e}");
            }
        }
        self.muxer.bury();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        match self.state.take_event(events.fd()) {
            Some(StateEvent::Queue(RXQ)) => self.process_rx(now),
            Some(StateEvent::Queue(TXQ)) => self.process_tx(now),
            Some(StateEvent::Queue(_)) => self.on_event_queue_notify(now),
            Some(StateEvent::Wake) => {
                self.process_event_queue(now);
                self.process_tx(now);
                self.process_rx(now);
            }
            None => {
                self.muxer
                    .handle_event(events.fd(), events.event_set(), now);
                self.process_rx(now);
            }
        }
        self.apply_epoll_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.register(ops);
        for fd in self.muxer.static_fds() {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("vsock: cannot watch fd {fd}: {e}");
            }
        }
        self.apply_epoll_ops(ops);
    }
}
