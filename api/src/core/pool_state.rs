//! The state machine of one warm pool: how many VMs to boot now, and the
//! exponential backoff after failed boots (one probe boot at a time while
//! failing, so a broken template never causes a spawn storm).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Backoff after consecutive failures: `base * 2^(failures-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay after `failures` consecutive failures (0 = none).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// One pool; `T` is a ready VM.
#[derive(Debug)]
pub(crate) struct PoolState<T> {
    /// VMs to keep ready.
    pub target: u32,
    /// Ready VMs, oldest first, with when they became ready.
    pub ready: VecDeque<(Instant, T)>,
    /// Boots in flight.
    pub booting: u32,
    /// Failed boots in a row.
    pub consecutive_failures: u32,
    /// No boot before this.
    pub backoff_until: Option<Instant>,
    /// The last failure.
    pub last_error: Option<String>,
}

impl<T> PoolState<T> {
    /// An empty pool.
    pub fn new(target: u32) -> Self {
        PoolState {
            target,
            ready: VecDeque::new(),
            booting: 0,
            consecutive_failures: 0,
            backoff_until: None,
            last_error: None,
        }
    }

    /// How many boots to start now, given room for `capacity` more VMs on
    /// the host and `parallel` more boots in flight.
    pub fn boots_wanted(&self, now: Instant, capacity: u32, parallel: u32) -> u32 {
        if self.backoff_until.is_some_and(|t| now < t) {
            return 0;
        }
        let have = u32::try_from(self.ready.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.booting);
        let mut want = self.target.saturating_sub(have);
        if self.consecutive_failures > 0 {
            // Failing: one probe at a time.
            want = want.min(1).saturating_sub(self.booting);
        }
        want.min(capacity).min(parallel)
    }

    /// A boot started.
    pub fn boot_started(&mut self) {
        self.booting += 1;
    }

    /// A boot succeeded: the VM joins the pool and the backoff resets.
    pub fn boot_succeeded(&mut self, now: Instant, vm: T) {
        self.booting = self.booting.saturating_sub(1);
        self.consecutive_failures = 0;
        self.backoff_until = None;
        self.ready.push_back((now, vm));
    }

    /// A boot failed: back off exponentially; returns the delay.
    pub fn boot_failed(&mut self, now: Instant, error: String, backoff: &Backoff) -> Duration {
        self.booting = self.booting.saturating_sub(1);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let delay = backoff.delay(self.consecutive_failures);
        self.backoff_until = Some(now + delay);
        self.last_error = Some(error);
        delay
    }

    /// A boot that was abandoned (not a failure of the template, e.g. the
    /// daemon drains).
    pub fn boot_abandoned(&mut self) {
        self.booting = self.booting.saturating_sub(1);
    }

    /// Takes the oldest ready VM.
    pub fn claim(&mut self) -> Option<T> {
        self.ready.pop_front().map(|(_, vm)| vm)
    }

    /// Removes the ready VMs older than `max_age` (to recycle them), and
    /// those over the target (after the target was lowered).
    pub fn take_expired(&mut self, now: Instant, max_age: Duration) -> Vec<T> {
        let mut out = Vec::new();
        while self
            .ready
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= max_age)
        {
            if let Some((_, vm)) = self.ready.pop_front() {
                out.push(vm);
            }
        }
        while self.ready.len() > self.target as usize {
            if let Some((_, vm)) = self.ready.pop_front() {
                out.push(vm);
            }
        }
        out
    }

    /// Removes every ready VM `pred` picks.
    pub fn take_where(&mut self, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let (taken, kept) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|(_, vm)| pred(vm));
        self.ready = kept;
        taken.into_iter().map(|(_, vm)| vm).collect()
    }

    /// Removes the ready VM `pred` picks (one that died in the pool).
    pub fn remove(&mut self, pred: impl Fn(&T) -> bool) -> Option<T> {
        let i = self.ready.iter().position(|(_, vm)| pred(vm))?;
        self.ready.remove(i).map(|(_, vm)| vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (0..9).map(|f| B.delay(f).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(B.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn fills_to_target_within_capacity_and_parallelism() {
        let now = Instant::now();
        let mut p = PoolState::<u32>::new(4);
        assert_eq!(p.boots_wanted(now, 10, 10), 4);
        assert_eq!(p.boots_wanted(now, 2, 10), 2);
        assert_eq!(p.boots_wanted(now, 10, 1), 1);
        p.boot_started();
        p.boot_started();
        assert_eq!(p.boots_wanted(now, 10, 10), 2);
        p.boot_succeeded(now, 1);
        p.boot_succeeded(now, 2);
        assert_eq!(p.boots_wanted(now, 10, 10), 2);
        assert_eq!(p.claim(), Some(1), "oldest first");
        assert_eq!(p.boots_wanted(now, 10, 10), 3, "refill after a claim");
    }

    #[test]
    fn take_where_takes_every_match_and_keeps_the_order_of_the_rest() {
        let now = Instant::now();
        let mut p = PoolState::<u32>::new(5);
        for vm in 1..=5 {
            p.boot_started();
            p.boot_succeeded(now, vm);
        }
        assert_eq!(p.take_where(|vm| vm % 2 == 1), [1, 3, 5]);
        assert_eq!(p.boots_wanted(now, 10, 10), 3, "the taken are replaced");
        assert_eq!((p.claim(), p.claim(), p.claim()), (Some(2), Some(4), None));
    }

    #[test]
    fn failures_back_off_and_probe_one_at_a_time() {
        let now = Instant::now();
        let mut p = PoolState::<u32>::new(8);
        for _ in 0..3 {
            p.boot_started();
        }
        let d = p.boot_failed(now, "boom".into(), &B);
        assert_eq!(d, Duration::from_secs(1));
        assert_eq!(p.last_error.as_deref(), Some("boom"));
        assert_eq!(p.boots_wanted(now, 10, 10), 0, "backing off");
        let later = now + Duration::from_secs(1);
        // Two boots still in flight: no probe until they are done.
        assert_eq!(p.boots_wanted(later, 10, 10), 0);
        p.boot_abandoned();
        p.boot_abandoned();
        assert_eq!(p.boots_wanted(later, 10, 10), 1, "one probe");
        p.boot_started();
        let d = p.boot_failed(later, "boom again".into(), &B);
        assert_eq!(d, Duration::from_secs(2));
        assert_eq!(p.consecutive_failures, 2);
        let after = later + d;
        p.boot_started();
        p.boot_succeeded(after, 7);
        assert_eq!(p.consecutive_failures, 0);
        assert_eq!(p.boots_wanted(after, 10, 10), 7, "healthy: fill again");
    }

    #[test]
    fn old_and_surplus_vms_are_taken_for_recycling() {
        let now = Instant::now();
        let mut p = PoolState::<u32>::new(3);
        p.ready.push_back((now, 1));
        p.ready.push_back((now + Duration::from_secs(50), 2));
        p.ready.push_back((now + Duration::from_secs(90), 3));
        let at = now + Duration::from_secs(100);
        assert_eq!(p.take_expired(at, Duration::from_secs(60)), vec![1]);
        p.target = 1;
        assert_eq!(p.take_expired(at, Duration::from_secs(60)), vec![2]);
        assert_eq!(p.remove(|&v| v == 3), Some(3));
        assert!(p.ready.is_empty());
    }
}
