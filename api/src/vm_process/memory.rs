//! What a VM process costs the host in memory, from `/proc/<pid>/smaps_rollup`
//! of the process kiln started and its children (a jailed kiln-vmm is a
//! supervisor whose child is the VMM). Shared pages are those mapped by
//! more than one process: for clones, the snapshot's memory file in the
//! page cache until a clone writes a page.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Host memory of one VM process tree, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMemory {
    /// Resident set.
    pub rss: u64,
    /// Proportional set: shared pages divided among their sharers.
    pub pss: u64,
    /// Resident pages only this VM maps.
    pub private: u64,
    /// Resident pages other processes map too.
    pub shared: u64,
}

impl std::ops::Add for VmMemory {
    type Output = VmMemory;

    /// Field-wise (saturating) sum.
    fn add(self, other: VmMemory) -> VmMemory {
        VmMemory {
            rss: self.rss.saturating_add(other.rss),
            pss: self.pss.saturating_add(other.pss),
            private: self.private.saturating_add(other.private),
            shared: self.shared.saturating_add(other.shared),
        }
    }
}

/// Parses `smaps_rollup` (values in kB).
pub fn parse_smaps_rollup(text: &str) -> VmMemory {
    let mut m = VmMemory::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        let bytes = kib.saturating_mul(1024);
        match key {
            "Rss:" => m.rss = bytes,
            "Pss:" => m.pss = bytes,
            "Private_Clean:" | "Private_Dirty:" => m.private = m.private.saturating_add(bytes),
            "Shared_Clean:" | "Shared_Dirty:" => m.shared = m.shared.saturating_add(bytes),
            _ => {}
        }
    }
    m
}

/// The memory of `pid` and its direct children, or `None` when `pid` is
/// gone or unreadable (another user's process without the privilege).
pub fn of_process_tree(pid: u32) -> Option<VmMemory> {
    let proc_dir = Path::new("/proc");
    let read = |pid: &str| std::fs::read_to_string(proc_dir.join(pid).join("smaps_rollup")).ok();
    let own = parse_smaps_rollup(&read(&pid.to_string())?);
    let children = std::fs::read_to_string(proc_dir.join(format!("{pid}/task/{pid}/children")))
        .unwrap_or_default();
    Some(
        children
            .split_whitespace()
            .filter_map(read)
            .map(|t| parse_smaps_rollup(&t))
            .fold(own, |a, m| a + m),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_rollup_fields() {
        let text = "55d0a0000000-7ffd0000000 ---p 00000000 00:00 0 [rollup]\n\
                    Rss:               10240 kB\n\
                    Pss:                6144 kB\n\
                    Pss_Anon:           2048 kB\n\
                    Shared_Clean:       8000 kB\n\
                    Shared_Dirty:          0 kB\n\
                    Private_Clean:       100 kB\n\
                    Private_Dirty:      2140 kB\n\
                    Referenced:        10240 kB\n\
                    bogus line\n\
                    Rss: x kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            VmMemory {
                rss: 10240 * 1024,
                pss: 6144 * 1024,
                private: 2240 * 1024,
                shared: 8000 * 1024,
            }
        );
    }

    #[test]
    fn reads_this_process_and_not_a_missing_one() {
        let me = of_process_tree(std::process::id()).expect("own smaps_rollup");
        assert!(me.rss > 0 && me.pss > 0 && me.private > 0, "{me:?}");
        assert_eq!(of_process_tree(u32::MAX), None);
    }
}
