//! Host memory of VM processes, from /proc: proportional resident memory
//! split into guest RAM and the VMM's own, and the process tree.

/// A process's proportional resident memory (PSS: a page shared by n
/// processes counts 1/n in each, so the static binary is not counted once
/// per VM), KiB: `(in mappings of exactly `guest_kib`, everything else)`.
/// A kiln-vmm maps guest RAM below the MMIO gap as one anonymous mapping
/// of the guest's size; the rest is the VMM's own share (binary, heap,
/// thread stacks, device buffers).
pub fn rss_split_kib(pid: u32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut guest, mut own) = (0, 0);
    let mut in_guest = false;
    let kib = |v: &str| -> u64 { v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0) };
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            in_guest = kib(v) == guest_kib;
        } else if let Some(v) = line.strip_prefix("Pss:") {
            if in_guest {
                guest += kib(v);
            } else {
                own += kib(v);
            }
        }
    }
    (guest, own)
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
