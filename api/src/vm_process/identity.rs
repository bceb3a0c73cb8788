//! Who a process is: its pid *and* its start time, so a recycled pid is
//! never taken for the VM that once had it.

use std::path::Path;

/// A process identity that survives restarts of the daemon: the pid and the
/// process's start time (`/proc/<pid>/stat` field 22, clock ticks since
/// boot), which differ for any later process that reuses the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// The identity of the live process `pid`; `None` when there is none
    /// (or its `/proc` entry cannot be read).
    pub fn of(pid: u32) -> Option<Self> {
        Self::read(Path::new("/proc"), pid)
    }

    fn read(proc_root: &Path, pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
        let start_ticks = start_ticks(&stat)?;
        Some(ProcessIdentity { pid, start_ticks })
    }

    /// Whether the process this identity names still runs (and is not a
    /// zombie): same pid, same start time.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        start_ticks(&stat) == Some(self.start_ticks) && state(&stat) != Some('Z')
    }
}

/// The fields after the command name, which may itself hold spaces and
/// parentheses: everything after the *last* `)`.
fn after_comm(stat: &str) -> Option<&str> {
    Some(stat[stat.rfind(')')? + 1..].trim_start())
}

/// Field 3 of `/proc/<pid>/stat`: the process state letter.
fn state(stat: &str) -> Option<char> {
    after_comm(stat)?.chars().next()
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks.
fn start_ticks(stat: &str) -> Option<u64> {
    // Fields after comm start at field 3 (state); starttime is field 22.
    after_comm(stat)?
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (kiln vmm) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
        5 6 0 0 20 0 4 0 987654 123456789 1000 18446744073709551615";

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        assert_eq!(start_ticks(STAT), Some(987_654));
        assert_eq!(state(STAT), Some('S'));
        assert_eq!(start_ticks("1 (x) S 1 2"), None);
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id()).expect("own /proc entry");
        assert!(me.is_alive());
        let recycled = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!recycled.is_alive(), "same pid, other start time");
        assert!(ProcessIdentity::of(u32::MAX).is_none());
    }
}
