//! What the testbed's kernel can tell about a VMM at a given moment: its
//! threads (state, wait channel, kernel stack), KVM's counters, and a short
//! trace of KVM events with the guest RIPs the vCPU exits at. Used when a
//! stream stalls, so the report shows where each side was at that moment.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_KVM: &str = "/sys/kernel/debug/kvm";

/// Mounts debugfs and tracefs when they are missing (the testbed's init
/// leaves them out). Best effort: without them the report says so.
pub fn mount_kernel_fs() {
    for (fs, target) in [("debugfs", "/sys/kernel/debug"), ("tracefs", TRACEFS)] {
        if Path::new(target).join(".").exists() && dir_has_entries(target) {
            continue;
        }
        let _ = std::process::Command::new("mount")
            .args(["-t", fs, "none", target])
            .status();
    }
}

fn dir_has_entries(dir: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// KVM's global event counters (all VMs of the testbed kernel).
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmCounters {
    /// VM exits.
    pub exits: u64,
    /// Interrupts injected into guests.
    pub irq_injections: u64,
    /// Exits because a guest halted.
    pub halt_exits: u64,
}

impl KvmCounters {
    /// Reads the counters, or `None` without debugfs.
    pub fn read() -> Option<Self> {
        let get = |name: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new(DEBUGFS_KVM).join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(KvmCounters {
            exits: get("exits")?,
            irq_injections: get("irq_injections")?,
            halt_exits: get("halt_exits")?,
        })
    }

    /// The counts since `earlier`.
    pub fn since(self, earlier: KvmCounters) -> KvmCounters {
        KvmCounters {
            exits: self.exits.saturating_sub(earlier.exits),
            irq_injections: self.irq_injections.saturating_sub(earlier.irq_injections),
            halt_exits: self.halt_exits.saturating_sub(earlier.halt_exits),
        }
    }
}

/// Each thread of process `pid`: name, state, wait channel, CPU ticks and
/// kernel stack.
pub fn threads(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // Fields after the ")" that ends the command name: state is the
        // first, utime and stime the 12th and 13th.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| rest.get(i).copied().unwrap_or("?");
        let _ = writeln!(
            out,
            "  [{}] state {} wchan {} utime {} stime {}",
            read("comm").trim(),
            field(0),
            read("wchan").trim(),
            field(11),
            field(12)
        );
        for line in read("stack").lines().take(10) {
            let _ = writeln!(out, "      {line}");
        }
    }
    out
}

/// Turns KVM's trace events on once, with the ring buffer off, before any
/// VM runs. Enabling an event flips static keys (kernel text patched with
/// int3), and under the testbed's multi-threaded TCG that races with the
/// other CPU running the patched code and crashes the testbed kernel; so
/// [`kvm_trace`] later only switches the ring buffer (`tracing_on`), which
/// patches nothing. Returns whether tracing is ready.
pub fn arm_kvm_trace() -> bool {
    let t = Path::new(TRACEFS);
    let write = |f: &str, v: &str| std::fs::write(t.join(f), v).is_ok();
    write("tracing_on", "0") && write("events/kvm/enable", "1") && write("trace", "")
}

/// The raw KVM trace of the next `window` (after [`arm_kvm_trace`]).
fn record(window: Duration) -> Result<String, String> {
    let t = Path::new(TRACEFS);
    let write = |f: &str, v: &str| std::fs::write(t.join(f), v);
    let enabled = std::fs::read_to_string(t.join("events/kvm/enable")).unwrap_or_default();
    if enabled.trim() != "1" {
        return Err("kvm events are not armed (no tracefs?)".into());
    }
    let _ = write("trace", "");
    write("tracing_on", "1").map_err(|e| format!("cannot switch the ring buffer on: {e}"))?;
    std::thread::sleep(window);
    let _ = write("tracing_on", "0");
    let trace = std::fs::read_to_string(t.join("trace")).unwrap_or_default();
    let _ = write("trace", "");
    Ok(trace)
}

/// Records KVM events for `window` and summarizes them: events by type,
/// exits by reason and guest RIP, and the first raw exit lines.
pub fn kvm_trace(window: Duration) -> String {
    match record(window) {
        Ok(trace) => summarize_trace(&trace),
        Err(e) => format!("kvm trace: {e}\n"),
    }
}

/// KVM exits by reason over `window`, busiest first ("npf 1200, io 80").
pub fn kvm_exit_profile(window: Duration) -> String {
    match record(window) {
        Ok(trace) => exit_profile(&trace),
        Err(e) => e,
    }
}

fn exit_profile(trace: &str) -> String {
    let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
    for line in trace.lines().filter(|l| l.contains("kvm_exit:")) {
        let reason = line
            .split_once("reason ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("?");
        *by_reason.entry(reason).or_default() += 1;
    }
    let mut v: Vec<_> = by_reason.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let parts: Vec<String> = v.iter().map(|(r, n)| format!("{r} {n}")).collect();
    if parts.is_empty() {
        "no exits".into()
    } else {
        parts.join(", ")
    }
}

fn summarize_trace(trace: &str) -> String {
    use std::collections::BTreeMap;
    let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_exit: BTreeMap<String, u64> = BTreeMap::new();
    let mut raw = Vec::new();
    for line in trace.lines().filter(|l| !l.starts_with('#')) {
        let Some(event) = line.split_whitespace().find(|w| w.starts_with("kvm_")) else {
            continue;
        };
        *by_event.entry(event.trim_end_matches(':')).or_default() += 1;
        if event == "kvm_exit:" {
            let word_after = |key: &str| {
                line.split_once(key)
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string()
            };
            *by_exit
                .entry(format!(
                    "{} rip {}",
                    word_after("reason "),
                    word_after("rip ")
                ))
                .or_default() += 1;
            if raw.len() < 5 {
                raw.push(line.trim().chars().take(250).collect::<String>());
            }
        }
    }
    let mut out = String::from("  kvm events in the window:");
    for (event, n) in &by_event {
        let _ = write!(out, " {event} {n}");
    }
    out.push('\n');
    let mut exits: Vec<_> = by_exit.into_iter().collect();
    exits.sort_by_key(|e| std::cmp::Reverse(e.1));
    let host_symbols = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    for (what, n) in exits.iter().take(10) {
        // A guest RIP that falls in the testbed kernel's own text is named:
        // the guest kernel has no code there, so it means the guest's state
        // was replaced by the host's.
        let host = what
            .rsplit_once("rip 0x")
            .and_then(|(_, hex)| u64::from_str_radix(hex, 16).ok())
            .and_then(|rip| host_symbol(&host_symbols, rip))
            .map(|sym| format!(" (a testbed-kernel address: {sym})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  exit {what}: {n}{host}");
    }
    for line in raw {
        let _ = writeln!(out, "  raw: {line}");
    }
    out
}

/// The `/proc/kallsyms` symbol (with offset and module) that holds `addr`,
/// when `addr` lies in the kernel's module area or text and the nearest
/// symbol is close (64 KiB).
fn host_symbol(kallsyms: &str, addr: u64) -> Option<String> {
    let mut best: Option<(u64, &str)> = None;
    for line in kallsyms.lines() {
        let mut words = line.split_whitespace();
        let (Some(a), Some(kind), Some(name)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if a != 0 && a <= addr && best.is_none_or(|(b, _)| a > b) {
            best = Some((a, name));
        }
        let _ = words.next();
    }
    let (start, name) = best?;
    let module = kallsyms
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(name))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("");
    (addr - start < 0x10000).then(|| format!("{name}+{:#x} {module}", addr - start))
}

/// The last `n` lines of a text file (a console or VMM log).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(n)..] {
        let _ = writeln!(out, "  | {line}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn trace_summary_counts_exits_by_reason_and_rip() {
        let trace = "# tracer: nop\n\
            kiln-vmm-12 [001] d.... 1.0: kvm_exit: vcpu 0 reason npf rip 0xffffffff81000010 info1 0x1 info2 0x2\n\
            kiln-vmm-12 [001] d.... 1.1: kvm_entry: vcpu 0, rip 0xffffffff81000010\n\
            kiln-vmm-12 [001] d.... 1.2: kvm_exit: vcpu 0 reason npf rip 0xffffffff81000010 info1 0x1 info2 0x2\n\
            kiln-vmm-12 [001] d.... 1.3: kvm_exit: vcpu 0 reason hlt rip 0xffffffff81000020 info1 0x0 info2 0x0\n";
        let s = summarize_trace(trace);
        assert!(s.contains("kvm_exit 3"), "{s}");
        assert!(s.contains("kvm_entry 1"), "{s}");
        assert!(s.contains("exit npf rip 0xffffffff81000010: 2"), "{s}");
        assert!(s.contains("exit hlt rip 0xffffffff81000020: 1"), "{s}");
    }

    #[test]
    fn exit_profile_counts_reasons_busiest_first() {
        let trace = "a: kvm_exit: vcpu 0 reason io rip 0x1\n\
                     b: kvm_exit: vcpu 0 reason npf rip 0x2\n\
                     c: kvm_exit: vcpu 0 reason npf rip 0x3\n\
                     d: kvm_entry: vcpu 0\n";
        assert_eq!(exit_profile(trace), "npf 2, io 1");
        assert_eq!(exit_profile(""), "no exits");
    }

    #[test]
    fn host_symbols_are_found_with_offset_and_module() {
        let kallsyms = "ffffffffc0500000 t svm_vcpu_run\t[kvm_amd]\n\
                        ffffffffc0500400 T svm_other\t[kvm_amd]\n\
                        ffffffffc0600000 d some_data\t[kvm]\n";
        assert_eq!(
            host_symbol(kallsyms, 0xffff_ffff_c050_0010).as_deref(),
            Some("svm_vcpu_run+0x10 [kvm_amd]")
        );
        assert_eq!(host_symbol(kallsyms, 0xffff_ffff_c040_0000), None);
        assert_eq!(host_symbol(kallsyms, 0xffff_ffff_c070_0000), None);
    }

    #[test]
    fn threads_of_this_process_are_listed() {
        let s = threads(std::process::id());
        assert!(s.contains("state"), "{s}");
        assert!(threads(u32::MAX).contains("gone"));
    }
}
