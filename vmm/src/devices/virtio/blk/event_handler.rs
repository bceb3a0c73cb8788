//! virtio-blk on the event loop: queue notifications and activation.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Blk;
use crate::devices::virtio::warn_limited;

impl MutEventSubscriber for Blk {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[0].as_raw_fd() {
            let _ = self.queue_evts[0].read();
        } else if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
        } else {
            warn_limited!("virtio-blk: event on unknown fd {fd}");
            return;
        }
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.queue_evts[0], &self.activate_evt] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!("virtio-blk: cannot watch eventfd: {e}");
            }
        }
    }
}
