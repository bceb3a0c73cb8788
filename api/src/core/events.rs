//! The lifecycle event feed: every event is stored (sequence numbers
//! survive restarts) and broadcast to live subscribers.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::store::Store;
use crate::error::EndReason;
use crate::model::{now_ms, Event, EventKind};

/// Live subscribers that fall this far behind skip ahead and re-read the
/// store.
const LIVE_BUFFER: usize = 1024;

pub(crate) struct Events {
    store: Arc<Store>,
    live: broadcast::Sender<Event>,
}

impl Events {
    pub fn new(store: Arc<Store>) -> Self {
        Events {
            store,
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Records and broadcasts an event.
    pub fn emit(
        &self,
        kind: EventKind,
        sandbox_id: Option<&str>,
        template: Option<&str>,
        reason: Option<EndReason>,
        expires_at_ms: Option<u64>,
        message: Option<String>,
    ) {
        let event = Event {
            seq: 0,
            at_ms: now_ms(),
            kind,
            sandbox_id: sandbox_id.map(str::to_string),
            template: template.map(str::to_string),
            reason,
            expires_at_ms,
            message,
        };
        match self.store.append_event(event) {
            Ok(stored) => {
                tracing::debug!(seq = stored.seq, kind = ?stored.kind, sandbox = ?stored.sandbox_id, "event");
                let _ = self.live.send(stored);
            }
            Err(e) => tracing::warn!(error = %e, "event not recorded"),
        }
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Stored events after `seq`.
    pub fn after(&self, seq: u64, limit: u32) -> crate::Result<Vec<Event>> {
        Ok(self.store.events_after(seq, limit)?)
    }
}
