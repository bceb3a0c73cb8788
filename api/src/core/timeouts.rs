//! When a sandbox ends: the earlier of its TTL deadline (ready + TTL) and
//! its idle deadline (last activity + idle timeout; none while an exec
//! runs), and when its `expiring` notice goes out.

use crate::error::EndReason;

/// A sandbox's clock, all times in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// When it became ready (the TTL starts then).
    pub ready_at_ms: u64,
    /// TTL, ms.
    pub ttl_ms: u64,
    /// Last API call or exec end.
    pub last_activity_ms: u64,
    /// Idle timeout, ms.
    pub idle_ms: u64,
    /// Execs running now (they count as activity).
    pub running_execs: u32,
}

/// The next end of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Why it will end then.
    pub reason: EndReason,
}

impl Clock {
    /// The next deadline.
    pub fn deadline(&self) -> Deadline {
        let ttl = Deadline {
            at_ms: self.ready_at_ms.saturating_add(self.ttl_ms),
            reason: EndReason::Ttl,
        };
        if self.running_execs > 0 {
            return ttl;
        }
        let idle = Deadline {
            at_ms: self.last_activity_ms.saturating_add(self.idle_ms),
            reason: EndReason::Idle,
        };
        if idle.at_ms < ttl.at_ms {
            idle
        } else {
            ttl
        }
    }

    /// Whether the sandbox has ended at `now_ms`, and why.
    pub fn expired(&self, now_ms: u64) -> Option<EndReason> {
        let d = self.deadline();
        (now_ms >= d.at_ms).then_some(d.reason)
    }

    /// When the `expiring` notice for the current deadline is due: `notice`
    /// ms before it (at once when the deadline is nearer than that).
    pub fn notice_at(&self, notice_ms: u64) -> u64 {
        self.deadline().at_ms.saturating_sub(notice_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock {
            ready_at_ms: 1_000,
            ttl_ms: 60_000,
            last_activity_ms: 1_000,
            idle_ms: 10_000,
            running_execs: 0,
        }
    }

    #[test]
    fn idle_comes_first_then_activity_pushes_it_back_to_the_ttl() {
        let mut c = clock();
        assert_eq!(
            c.deadline(),
            Deadline {
                at_ms: 11_000,
                reason: EndReason::Idle
            }
        );
        assert_eq!(c.expired(10_999), None);
        assert_eq!(c.expired(11_000), Some(EndReason::Idle));
        c.last_activity_ms = 55_000;
        assert_eq!(
            c.deadline(),
            Deadline {
                at_ms: 61_000,
                reason: EndReason::Ttl
            }
        );
        assert_eq!(c.expired(61_000), Some(EndReason::Ttl));
    }

    #[test]
    fn a_running_exec_holds_off_idle_but_not_the_ttl() {
        let mut c = clock();
        c.running_execs = 1;
        assert_eq!(c.expired(30_000), None);
        assert_eq!(c.expired(61_000), Some(EndReason::Ttl));
    }

    #[test]
    fn notice_precedes_the_deadline_and_never_underflows() {
        let c = clock();
        assert_eq!(c.notice_at(3_000), 8_000);
        assert_eq!(c.notice_at(u64::MAX), 0);
        let far = Clock {
            ttl_ms: u64::MAX,
            idle_ms: u64::MAX,
            ..c
        };
        assert_eq!(far.deadline().at_ms, u64::MAX);
    }
}
