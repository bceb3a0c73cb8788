//! Rate-limited logging to `/dev/kmsg` (as PID 1) or stderr.
//!
//! Anything a client can trigger is logged through here, so a flood of bad
//! connections costs at most `BURST` lines per second plus one line saying
//! how many were dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines allowed per window.
const BURST: u32 = 20;
/// Length of a rate-limit window.
const WINDOW: Duration = Duration::from_secs(1);
/// Longest line written; longer ones are cut.
const MAX_LINE: usize = 512;

struct Logger {
    kmsg: Option<File>,
    window_start: Instant,
    in_window: u32,
    dropped: u64,
}

static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();

/// Chooses the sink. With `kmsg`, lines go to the kernel log (falling back
/// to stderr when `/dev/kmsg` cannot be opened); before this is called they
/// go to stderr.
pub fn init(kmsg: bool) {
    if !kmsg {
        return;
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok();
    if let Ok(mut logger) = logger().lock() {
        logger.kmsg = file;
    }
}

fn logger() -> &'static Mutex<Logger> {
    LOGGER.get_or_init(|| {
        Mutex::new(Logger {
            kmsg: None,
            window_start: Instant::now(),
            in_window: 0,
            dropped: 0,
        })
    })
}

/// Writes one log line, subject to the rate limit.
pub fn write(args: std::fmt::Arguments<'_>) {
    let Ok(mut logger) = logger().lock() else {
        return;
    };
    let now = Instant::now();
    if now.duration_since(logger.window_start) >= WINDOW {
        let dropped = std::mem::take(&mut logger.dropped);
        logger.window_start = now;
        logger.in_window = 0;
        if dropped > 0 {
            logger.emit(&format!("{dropped} log lines suppressed"));
        }
    }
    if logger.in_window >= BURST {
        logger.dropped += 1;
        return;
    }
    logger.in_window += 1;
    let mut line = args.to_string();
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    logger.emit(&line);
}

impl Logger {
    fn emit(&mut self, line: &str) {
        let line = line.replace('\n', " ");
        match &mut self.kmsg {
            // One write() is one kernel log record; <6> is KERN_INFO.
            Some(kmsg) => {
                let _ = kmsg.write_all(format!("<6>kiln-agent: {line}\n").as_bytes());
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "kiln-agent: {line}");
            }
        }
    }
}

/// Logs a formatted line through [`write`].
macro_rules! klog {
    ($($arg:tt)*) => {
        $crate::agent::klog::write(format_args!($($arg)*))
    };
}
pub(crate) use klog;

/// Formats an error with its whole `source()` chain: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
