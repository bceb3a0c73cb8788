//! Host memory of VM processes, from /proc: resident memory split into
//! guest RAM and the VMM's own, and the process tree.

/// Resident memory of some mappings, KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemUse {
    /// Resident set (every resident page, shared or not).
    pub rss: u64,
    /// Proportional set: a page shared by n processes counts 1/n.
    pub pss: u64,
    /// Pages only this process maps.
    pub private: u64,
    /// Pages other processes map too (a clone's untouched snapshot pages,
    /// once more than one clone maps them).
    pub shared: u64,
    /// Anonymous pages: in a clone's snapshot mapping, the pages it copied
    /// on write; the rest of its guest RSS is the snapshot file's page
    /// cache, shared or not.
    pub anon: u64,
}

impl MemUse {
    fn add(&mut self, other: MemUse) {
        self.rss += other.rss;
        self.pss += other.pss;
        self.private += other.private;
        self.shared += other.shared;
        self.anon += other.anon;
    }
}

/// A VM's memory: in guest RAM, and everything else (binary, heap, thread
/// stacks, device buffers: the VMM's own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemSplit {
    /// Guest RAM below the MMIO gap: adjacent mappings spanning exactly the
    /// guest's size (anonymous memory with the kernel and initramfs files
    /// mapped into it when booted, the snapshot's memory file when
    /// restored).
    pub guest: MemUse,
    /// The rest.
    pub own: MemUse,
}

impl MemSplit {
    /// Adds another process's split (a jailed VM is a supervisor and its
    /// VMM).
    pub fn add(&mut self, other: MemSplit) {
        self.guest.add(other.guest);
        self.own.add(other.own);
    }
}

/// One mapping of `/proc/<pid>/smaps`: its address range and memory.
struct Vma {
    start: u64,
    end: u64,
    mem: MemUse,
}

/// Parses `/proc/<pid>/smaps` text into its mappings.
fn parse_vmas(smaps: &str) -> Vec<Vma> {
    let kib = |v: &str| -> u64 { v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0) };
    let mut vmas: Vec<Vma> = Vec::new();
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((Ok(start), Ok(end))) =
            range.map(|(a, b)| (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)))
        {
            vmas.push(Vma {
                start,
                end,
                mem: MemUse::default(),
            });
            continue;
        }
        let (Some((key, value)), Some(vma)) = (line.split_once(':'), vmas.last_mut()) else {
            continue;
        };
        let part = &mut vma.mem;
        match key {
            "Rss" => part.rss += kib(value),
            "Pss" => part.pss += kib(value),
            "Private_Clean" | "Private_Dirty" => part.private += kib(value),
            "Shared_Clean" | "Shared_Dirty" => part.shared += kib(value),
            "Anonymous" => part.anon += kib(value),
            _ => {}
        }
    }
    vmas
}

/// Which mappings hold guest RAM below the MMIO gap: the first run of
/// address-adjacent mappings that together span exactly `guest_kib`. kiln
/// maps guest RAM as one region and then maps the kernel, the initramfs
/// (booted) or the snapshot's memory file (restored) over parts of it, so
/// the region shows as several mappings side by side.
fn guest_run(vmas: &[Vma], guest_kib: u64) -> Option<std::ops::Range<usize>> {
    let want = guest_kib.checked_mul(1024)?;
    for first in 0..vmas.len() {
        let mut span = 0;
        for last in first..vmas.len() {
            if last > first && vmas[last].start != vmas[last - 1].end {
                break;
            }
            span += vmas[last].end.saturating_sub(vmas[last].start);
            if span == want {
                return Some(first..last + 1);
            }
            if span > want {
                break;
            }
        }
    }
    None
}

/// Parses `/proc/<pid>/smaps` text.
fn split_smaps(smaps: &str, guest_kib: u64) -> MemSplit {
    let vmas = parse_vmas(smaps);
    let guest = guest_run(&vmas, guest_kib).unwrap_or(0..0);
    let mut split = MemSplit::default();
    for (i, vma) in vmas.iter().enumerate() {
        if guest.contains(&i) {
            split.guest.add(vma.mem);
        } else {
            split.own.add(vma.mem);
        }
    }
    split
}

/// One process's memory split into guest RAM (adjacent mappings spanning
/// exactly `guest_kib`) and the rest; zero when the process is gone.
pub fn mem_split(pid: u32, guest_kib: u64) -> MemSplit {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    split_smaps(&smaps, guest_kib)
}

/// A VM's memory: the process `pid` and its children (a jailed kiln-vmm
/// is a supervisor plus the VMM it forks).
pub fn vm_mem(pid: u32, guest_kib: u64) -> MemSplit {
    let mut total = mem_split(pid, guest_kib);
    for child in children_of(pid) {
        total.add(mem_split(child, guest_kib));
    }
    total
}

/// PSS of one process, KiB: `(guest RAM, everything else)`.
pub fn rss_split_kib(pid: u32, guest_kib: u64) -> (u64, u64) {
    let s = mem_split(pid, guest_kib);
    (s.guest.pss, s.own.pss)
}

/// The host's `MemAvailable`, KiB (what new work can still get).
pub fn mem_available_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The pid's parent, from /proc.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pids whose parent is `pid` (a jailed kiln-vmm supervisor's VMM).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00500000 r-xp 00000000 00:10 1 /bin/kiln-vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
Shared_Clean:        800 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
7f0000000000-7f0010000000 rw-p 00000000 00:10 2 /tmp/snap/memory
Size:             262144 kB
Rss:                9000 kB
Pss:                3000 kB
Shared_Clean:       6000 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:      3000 kB
Anonymous:          3000 kB
7ff000000000-7ff000100000 rw-p 00000000 00:00 0 [heap]
Size:               1024 kB
Rss:                 100 kB
Pss:                 100 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:        20 kB
Private_Dirty:        80 kB
Anonymous:            80 kB
";

    #[test]
    fn smaps_split_into_guest_and_own() {
        let s = split_smaps(SMAPS, 256 * 1024);
        assert_eq!(
            s.guest,
            MemUse {
                rss: 9000,
                pss: 3000,
                private: 3000,
                shared: 6000,
                anon: 3000
            }
        );
        assert_eq!(
            s.own,
            MemUse {
                rss: 900,
                pss: 500,
                private: 100,
                shared: 800,
                anon: 80
            }
        );
        let mut twice = s;
        twice.add(s);
        assert_eq!(twice.own.rss, 1800);
    }

    #[test]
    fn a_guest_region_split_by_file_mappings_is_still_guest_ram() {
        // 4 MiB of guest RAM: anonymous, a kernel file mapped into it,
        // anonymous again; then an adjacent heap that is not guest RAM.
        let smaps = "\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 100 kB
Pss:                 100 kB
Private_Dirty:       100 kB
Anonymous:           100 kB
7f0000100000-7f0000300000 rw-p 00200000 00:10 3 /guest/vmlinux
Rss:                 500 kB
Pss:                 250 kB
Shared_Clean:        500 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Rss:                  40 kB
Pss:                  40 kB
Private_Dirty:        40 kB
Anonymous:            40 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 [heap]
Rss:                   8 kB
Pss:                   8 kB
Private_Dirty:         8 kB
";
        let s = split_smaps(smaps, 4 * 1024);
        assert_eq!(
            s.guest,
            MemUse {
                rss: 640,
                pss: 390,
                private: 140,
                shared: 500,
                anon: 140
            }
        );
        assert_eq!(s.own.rss, 8);
    }

    #[test]
    fn no_guest_mapping_counts_everything_as_own() {
        let s = split_smaps(SMAPS, 4);
        assert_eq!(s.guest, MemUse::default());
        assert_eq!(s.own.rss, 9900);
    }
}
