//! How often a proxy may report: a guest that opens connections in a
//! tight loop must not turn into a flood of audit writes and log lines.
//! A token bucket lets bursts through and counts what it holds back; the
//! next report carries that count.

use std::sync::Mutex;

use tokio::time::Instant;

/// Reports a proxy may make at once.
const BURST: f64 = 100.0;

/// Reports per second after a burst.
const PER_SEC: f64 = 20.0;

/// A token bucket with a count of the reports it refused.
#[derive(Debug)]
pub(super) struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    held_back: u64,
}

impl Limiter {
    /// A full bucket.
    pub(super) fn new() -> Self {
        Limiter {
            state: Mutex::new(State {
                tokens: BURST,
                at: Instant::now(),
                held_back: 0,
            }),
        }
    }

    /// `Some(reports held back since the last one)` when this report may
    /// go out, else `None` (and it is counted).
    pub(super) fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.at).as_secs_f64() * PER_SEC;
        s.tokens = (s.tokens + refill).min(BURST);
        s.at = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Some(std::mem::take(&mut s.held_back))
        } else {
            s.held_back += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long an empty bucket takes to let one report through.
    const ONE: Duration = Duration::from_millis((1000.0 / PER_SEC) as u64 + 5);

    #[tokio::test]
    async fn a_burst_passes_then_the_rest_is_counted() {
        let l = Limiter::new();
        let passed = (0..1000).filter(|_| l.admit().is_some()).count();
        assert!((100..110).contains(&passed), "{passed}");
        tokio::time::sleep(ONE).await;
        let held = l.admit().expect("refilled");
        assert!(held >= 890, "{held}");
        assert_eq!(l.admit(), None);
    }
}
