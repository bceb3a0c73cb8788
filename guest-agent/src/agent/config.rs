//! Agent settings from the kernel command line (`/proc/cmdline`): the
//! sandbox's `kiln.overlay_mib=N`, `kiln.sandbox_mem_mib=N`,
//! `kiln.pids_max=N`, and the process table's `kiln.output_buffer_kib=N`
//! (each process's output ring), `kiln.max_processes=N` (running at once),
//! `kiln.max_finished=N` (finished ones kept for their status), and
//! `kiln.overlay_dev=vdX`: the writable disk that holds the sandbox's
//! writable layer instead of a tmpfs.
//!
//! The command line is written by the host, but a bad value must never stop
//! the agent: anything unparsable or out of range falls back to the default
//! and leaves a warning for the log.

/// Size of the writable tmpfs over the image, and of `/tmp`, when the
/// command line does not say (MiB).
pub const DEFAULT_OVERLAY_MIB: u64 = 1024;
/// Largest accepted `kiln.overlay_mib` (tmpfs pages are charged to the
/// sandbox's memory cgroup anyway; this only rejects nonsense).
const MAX_OVERLAY_MIB: u64 = 1 << 20;
/// Process limit of the sandbox cgroup when the command line does not say.
pub const DEFAULT_PIDS_MAX: u64 = 512;
/// Accepted `kiln.pids_max` range.
const PIDS_RANGE: (u64, u64) = (8, 1 << 22);
/// Accepted `kiln.sandbox_mem_mib` range.
const MEM_RANGE: (u64, u64) = (16, 1 << 24);
/// Longest command line examined (the kernel's own limit is far lower).
const MAX_CMDLINE: usize = 64 * 1024;
/// Output ring of each process when the command line does not say (KiB).
pub const DEFAULT_OUTPUT_BUFFER_KIB: u64 = 1024;
/// Accepted `kiln.output_buffer_kib` range: at least one full chunk.
pub const OUTPUT_BUFFER_KIB_RANGE: (u64, u64) = (64, 1 << 20);
/// Most running processes when the command line does not say.
pub const DEFAULT_MAX_PROCESSES: u64 = 64;
/// Accepted `kiln.max_processes` range.
pub const MAX_PROCESSES_RANGE: (u64, u64) = (1, 64);
/// Finished processes kept when the command line does not say.
pub const DEFAULT_MAX_FINISHED: u64 = 32;
/// Accepted `kiln.max_finished` range (live + finished fit one listing).
pub const MAX_FINISHED_RANGE: (u64, u64) = (0, 64);

/// Parsed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Size cap of the overlay's tmpfs and of `/tmp` (MiB).
    pub overlay_mib: u64,
    /// Memory limit of all sandboxed programs together (MiB); `None` means
    /// "total RAM minus the agent's reserve".
    pub sandbox_mem_mib: Option<u64>,
    /// Most processes in the sandbox at once.
    pub pids_max: u64,
    /// Output ring of each process in the table (KiB).
    pub output_buffer_kib: u64,
    /// Most table processes running at once.
    pub max_processes: u64,
    /// Most finished table processes kept.
    pub max_finished: u64,
    /// The block device (`vdb`..`vdz`) whose ext4 file system holds the
    /// overlay's writable layer and `/tmp`; `None`: a tmpfs of
    /// `overlay_mib`.
    pub overlay_dev: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            overlay_mib: DEFAULT_OVERLAY_MIB,
            sandbox_mem_mib: None,
            pids_max: DEFAULT_PIDS_MAX,
            output_buffer_kib: DEFAULT_OUTPUT_BUFFER_KIB,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_finished: DEFAULT_MAX_FINISHED,
            overlay_dev: None,
        }
    }
}

impl Config {
    /// Reads `/proc/cmdline`; bad values fall back with a warning.
    pub fn from_kernel() -> (Self, Vec<String>) {
        parse(&super::sandbox::read_proc("/proc/cmdline"))
    }
}

/// Parses a kernel command line; returns the settings and one warning per
/// rejected value.
pub fn parse(cmdline: &str) -> (Config, Vec<String>) {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    let cmdline = cut(cmdline, MAX_CMDLINE);
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if key == "kiln.overlay_dev" {
            if is_disk_name(value) {
                config.overlay_dev = Some(value.to_owned());
            } else {
                warnings.push(format!(
                    "ignoring kiln.overlay_dev={:?}: want vdb..vdz; using a tmpfs overlay",
                    cut(value, 32)
                ));
            }
            continue;
        }
        let range = match key {
            "kiln.overlay_mib" => (1, MAX_OVERLAY_MIB),
            "kiln.sandbox_mem_mib" => MEM_RANGE,
            "kiln.pids_max" => PIDS_RANGE,
            "kiln.output_buffer_kib" => OUTPUT_BUFFER_KIB_RANGE,
            "kiln.max_processes" => MAX_PROCESSES_RANGE,
            "kiln.max_finished" => MAX_FINISHED_RANGE,
            _ => continue,
        };
        let v = match value.parse::<u64>() {
            Ok(v) if (range.0..=range.1).contains(&v) => v,
            _ => {
                warnings.push(format!(
                    "ignoring {key}={:?}: want an integer in {}..={}; using the default",
                    cut(value, 32),
                    range.0,
                    range.1
                ));
                continue;
            }
        };
        match key {
            "kiln.overlay_mib" => config.overlay_mib = v,
            "kiln.sandbox_mem_mib" => config.sandbox_mem_mib = Some(v),
            "kiln.pids_max" => config.pids_max = v,
            "kiln.output_buffer_kib" => config.output_buffer_kib = v,
            "kiln.max_processes" => config.max_processes = v,
            _ => config.max_finished = v,
        }
    }
    (config, warnings)
}

/// `vdb` to `vdz`: a virtio disk after the image (`vda`).
fn is_disk_name(name: &str) -> bool {
    matches!(name.as_bytes(), [b'v', b'd', c] if (b'b'..=b'z').contains(c))
}

/// The first `max` bytes of `s`, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_our_keys() {
        let (c, w) = parse("console=ttyS0 quiet kiln.other=5 reboot=k\n");
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(parse("").0, Config::default());
    }

    #[test]
    fn reads_values() {
        let (c, w) =
            parse("quiet kiln.overlay_mib=64 kiln.sandbox_mem_mib=200 kiln.pids_max=100\n");
        assert_eq!(
            c,
            Config {
                overlay_mib: 64,
                sandbox_mem_mib: Some(200),
                pids_max: 100,
                ..Config::default()
            }
        );
        assert!(w.is_empty());
        let (c, w) = parse("kiln.output_buffer_kib=64 kiln.max_processes=3 kiln.max_finished=0");
        assert_eq!(
            (c.output_buffer_kib, c.max_processes, c.max_finished),
            (64, 3, 0)
        );
        assert!(w.is_empty());
        assert_eq!(
            parse("kiln.overlay_dev=vdb").0.overlay_dev.as_deref(),
            Some("vdb")
        );
        // The last occurrence wins, as for the kernel's own parameters.
        assert_eq!(parse("kiln.pids_max=9 kiln.pids_max=10").0.pids_max, 10);
    }

    #[test]
    fn hostile_values_fall_back_with_a_warning() {
        for bad in [
            "kiln.overlay_mib=",
            "kiln.overlay_mib=0",
            "kiln.overlay_mib=-1",
            "kiln.overlay_mib=1e3",
            "kiln.overlay_mib=0x10",
            "kiln.overlay_mib=99999999999999999999999",
            "kiln.overlay_mib=18446744073709551615",
            "kiln.pids_max=1",
            "kiln.pids_max=ünï",
            "kiln.sandbox_mem_mib=1",
            "kiln.sandbox_mem_mib= 5",
            "kiln.output_buffer_kib=63",
            "kiln.max_processes=0",
            "kiln.max_processes=65",
            "kiln.max_finished=65",
            "kiln.overlay_dev=vda",
            "kiln.overlay_dev=sda",
            "kiln.overlay_dev=../vdb",
            "kiln.overlay_dev=vdbb",
            "kiln.overlay_dev=",
        ] {
            let (c, w) = parse(bad);
            assert_eq!(c, Config::default(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
        }
        let long = format!("kiln.pids_max={}", "9".repeat(100_000));
        let (c, w) = parse(&long);
        assert_eq!(c, Config::default());
        assert_eq!(w.len(), 1);
        assert!(w[0].len() < 200, "warning is bounded: {}", w[0].len());
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 10), "abc");
    }
}
