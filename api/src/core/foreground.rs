//! Foreground requests (creates once they hold a VM, and foreground
//! execs until their exit) come before pool refills. A claim wakes the reconciler at once, and a
//! refill boot or restore started then takes CPU from the very exec the
//! caller is waiting for; so a refill waits until no foreground request
//! is in flight, or [`REFILL_YIELD`] at most, so pools still refill under
//! constant load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a pool refill waits for foreground requests to finish.
pub(super) const REFILL_YIELD: Duration = Duration::from_secs(1);

/// How many foreground requests are in flight.
#[derive(Debug, Default)]
pub(crate) struct Foreground {
    count: AtomicUsize,
    quiet: Notify,
}

/// One foreground request; dropping it ends it.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Foreground>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

impl Foreground {
    /// Counts a foreground request until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.count.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Waits until no foreground request is in flight, or `bound` passed.
    pub(crate) async fn quiet(&self, bound: Duration) {
        let wait = async {
            loop {
                let quiet = self.quiet.notified();
                tokio::pin!(quiet);
                quiet.as_mut().enable();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                quiet.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refill_waits_for_foreground_requests_within_its_bound() {
        let fg = Arc::new(Foreground::default());
        let start = tokio::time::Instant::now();
        fg.quiet(Duration::from_secs(5)).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "nothing in flight"
        );

        let busy = fg.begin();
        let second = fg.begin();
        let waiter = {
            let fg = Arc::clone(&fg);
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                fg.quiet(Duration::from_secs(30)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(busy);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(second);
        let waited = waiter.await.expect("waiter");
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");

        let _stuck = fg.begin();
        let start = tokio::time::Instant::now();
        fg.quiet(Duration::from_millis(100)).await;
        assert!(start.elapsed() >= Duration::from_millis(100), "bounded");
    }
}
