//! virtio-vsock on the event loop: queue notifications, activation, and the
//! muxer's unix sockets and timer.

use std::os::fd::AsRawFd;
use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::muxer::EpollOp;
use super::{Vsock, EVQ, RXQ, TXQ};
use crate::devices::virtio::warn_limited;

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
        let fd = events.fd();
        let now = Instant::now();
        if fd == self.queue_evts[RXQ].as_raw_fd() {
            let _ = self.queue_evts[RXQ].read();
            self.process_rx(now);
        } else if fd == self.queue_evts[TXQ].as_raw_fd() {
            let _ = self.queue_evts[TXQ].read();
            self.process_tx(now);
        } else if fd == self.queue_evts[EVQ].as_raw_fd() {
            let _ = self.queue_evts[EVQ].read();
            self.process_event_queue();
        } else if fd == self.state_evt.as_raw_fd() {
            let _ = self.state_evt.read();
            self.process_event_queue();
            self.process_tx(now);
            self.process_rx(now);
        } else {
            self.muxer.handle_event(fd, events.event_set(), now);
            self.process_rx(now);
        }
        self.apply_epoll_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<_> = self.queue_evts.iter().map(AsRawFd::as_raw_fd).collect();
        fds.push(self.state_evt.as_raw_fd());
        fds.extend(self.muxer.static_fds());
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("vsock: cannot watch fd {fd}: {e}");
            }
        }
        self.apply_epoll_ops(ops);
    }
}
