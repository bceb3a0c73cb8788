//! Where a request's time goes: named phases, each timed from the end of
//! the one before, logged as one debug line (`KILN_LOG=kiln=debug`) when
//! the request is done. Costs a clock read per phase when debug logging
//! is off.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Most phases one request records (the rest are dropped).
const MAX_PHASES: usize = 16;

/// The phases of one request.
#[derive(Debug)]
pub(crate) struct Phases {
    what: &'static str,
    start: Instant,
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Phases {
    /// Starts timing `what` (e.g. `create`, `exec`).
    pub(crate) fn start(what: &'static str) -> Self {
        let now = Instant::now();
        Phases {
            what,
            start: now,
            last: now,
            marks: Vec::new(),
        }
    }

    /// Ends phase `name` now.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        if self.marks.len() < MAX_PHASES {
            self.marks.push((name, now - self.last));
        }
        self.last = now;
    }

    /// Time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// `name=123us` for each phase, in order.
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, took) in &self.marks {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{name}={}us", took.as_micros());
        }
        out
    }

    /// Logs the phases at debug level.
    pub(crate) fn log(&self) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                total_us = self.elapsed().as_micros() as u64,
                phases = %self.render(),
                "profile {}",
                self.what
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_timed_in_order_and_bounded() {
        let mut p = Phases::start("test");
        p.mark("a");
        std::thread::sleep(Duration::from_millis(2));
        p.mark("b");
        let text = p.render();
        assert!(text.starts_with("a=") && text.contains(" b="), "{text}");
        assert!(p.marks[1].1 >= Duration::from_millis(2));
        for _ in 0..MAX_PHASES * 2 {
            p.mark("x");
        }
        assert_eq!(p.marks.len(), MAX_PHASES);
        assert!(p.elapsed() >= Duration::from_millis(2));
    }
}
