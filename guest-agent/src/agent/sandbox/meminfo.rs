//! How much memory the sandbox may use: total RAM (`MemTotal` from
//! `/proc/meminfo`) minus a reserve for the kernel and the agent.

/// Least memory kept back from the sandbox (bytes).
const MIN_RESERVE: u64 = 48 << 20;
/// Share of RAM kept back from the sandbox, in percent, when larger.
const RESERVE_PERCENT: u64 = 15;
/// Smallest limit ever given to the sandbox (bytes), so a tiny VM still
/// runs something.
const MIN_LIMIT: u64 = 16 << 20;

/// `MemTotal` in bytes, or `None` if `meminfo` has no sane line for it.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_ascii_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => {}
        _ => return None,
    }
    kib.checked_mul(1024)
}

/// The sandbox's `memory.max` (bytes) for a machine with `total` bytes of
/// RAM; `override_mib` (from the command line) wins when given, but never
/// exceeds `total`.
pub fn sandbox_limit(total: u64, override_mib: Option<u64>) -> u64 {
    if let Some(mib) = override_mib {
        return mib.saturating_mul(1 << 20).min(total).max(MIN_LIMIT);
    }
    let reserve = MIN_RESERVE.max(total / 100 * RESERVE_PERCENT);
    total.saturating_sub(reserve).max(MIN_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parses_real_meminfo() {
        let text = "MemTotal:         232412 kB\nMemFree:          200000 kB\n";
        assert_eq!(mem_total(text), Some(232_412 * 1024));
    }

    #[test]
    fn rejects_broken_meminfo() {
        for bad in [
            "",
            "MemFree: 5 kB\n",
            "MemTotal:\n",
            "MemTotal: x kB\n",
            "MemTotal: -5 kB\n",
            "MemTotal: 5 MB\n",
            "MemTotal: 5\n",
            "MemTotal: 18446744073709551615 kB\n",
            "MemTotal: 99999999999999999999999999 kB\n",
        ] {
            assert_eq!(mem_total(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_keep_a_reserve() {
        // 256 MiB VM: the 48 MiB floor applies.
        assert_eq!(sandbox_limit(256 * MIB, None), 208 * MIB);
        // 1 GiB: 15 % is more than 48 MiB.
        let gib = 1024 * MIB;
        assert_eq!(sandbox_limit(gib, None), gib - gib / 100 * 15);
        // Tiny or zero RAM still gives the minimum.
        assert_eq!(sandbox_limit(10 * MIB, None), MIN_LIMIT);
        assert_eq!(sandbox_limit(0, None), MIN_LIMIT);
    }

    #[test]
    fn override_is_capped_by_ram() {
        assert_eq!(sandbox_limit(256 * MIB, Some(100)), 100 * MIB);
        assert_eq!(sandbox_limit(256 * MIB, Some(u64::MAX)), 256 * MIB);
        assert_eq!(sandbox_limit(256 * MIB, Some(1)), MIN_LIMIT);
    }
}
