//! Counting what a device logs, for tests that check a guest cannot flood
//! the host's logs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::subscriber::DefaultGuard;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Counts the log events of the current thread while it lives.
pub struct LogCount {
    n: Arc<AtomicUsize>,
    _guard: DefaultGuard,
}

struct Counter(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl LogCount {
    /// Starts counting this thread's events (any level).
    pub fn start() -> Self {
        let n = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Counter(n.clone()));
        LogCount {
            n,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Events so far.
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }
}
