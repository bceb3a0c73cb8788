//! virtio-blk on the event loop: queue notifications and activation.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::Blk;
use crate::devices::virtio::warn_limited;

impl MutEventSubscriber for Blk {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.state.take_event(events.fd()).is_none() {
            warn_limited!("virtio-blk: event on unknown fd {}", events.fd());
            return;
        }
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.register(ops);
    }
}
