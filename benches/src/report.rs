//! Markdown tables of benchmark results, with ratios against the first peer.

use std::fmt::Write;
use std::time::Duration;

use crate::peer::BootSample;
use crate::stats::{summarize, Summary};
use crate::stream::{Direction, StreamResult};

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(out: &mut String, name: &str, metric: &str, s: &Summary, base: Option<&Summary>) {
    let ratio = base
        .map(|b| {
            format!(
                "{:.2}x",
                s.p50.as_secs_f64() / b.p50.as_secs_f64().max(f64::MIN_POSITIVE)
            )
        })
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "| {name} | {metric} | {} | {} | {} | {} | {} | {} | {ratio} |",
        s.n,
        ms(s.min),
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(s.max)
    );
}

/// One table: per VMM, (a) to userspace and (b) to first pong; the p50 ratio
/// column compares each row with the first VMM's same metric.
pub fn boot_table(results: &[(String, Vec<BootSample>)]) -> String {
    let mut out = String::new();
    out.push_str(
        "| vmm | metric | n | min ms | p50 ms | p95 ms | p99 ms | max ms | p50 vs first |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    type Metric = fn(&BootSample) -> Option<Duration>;
    let metrics: [(&str, Metric); 3] = [
        ("(a) start -> userspace", |s| Some(s.userspace)),
        ("(b) start -> agent pong", |s| Some(s.ping)),
        ("(c) vmm start -> guest entry", |s| s.vmm_setup),
    ];
    for (metric, get) in metrics {
        let base = results
            .first()
            .and_then(|(_, v)| summarize(&v.iter().filter_map(get).collect::<Vec<_>>()));
        for (name, samples) in results {
            if let Some(s) = summarize(&samples.iter().filter_map(get).collect::<Vec<_>>()) {
                row(&mut out, name, metric, &s, base.as_ref());
            }
        }
    }
    out
}

/// Exec latency table: one row per case.
pub fn exec_table(results: &[crate::exec::CaseResult]) -> String {
    let mut out = String::new();
    out.push_str("| exec (request -> result) | n | min ms | p50 ms | p95 ms | p99 ms | max ms |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in results {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            s.n,
            ms(s.min),
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max)
        );
    }
    out
}

/// MiB/s for `bytes` moved in `took`.
fn mib_per_s(bytes: u64, took: std::time::Duration) -> String {
    format!(
        "{:.1}",
        bytes as f64 / (1u64 << 20) as f64 / took.as_secs_f64()
    )
}

/// File transfer table: one row per direction and size, time and throughput.
pub fn transfer_table(results: &[crate::transfer::TransferResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| transfer | size MiB | n | p50 ms | p95 ms | max ms | p50 MiB/s | p95 MiB/s |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.direction,
            r.size >> 20,
            s.n,
            ms(s.p50),
            ms(s.p95),
            ms(s.max),
            mib_per_s(r.size, s.p50),
            mib_per_s(r.size, s.p95)
        );
    }
    out
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Out => "out",
        Direction::In => "in",
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// One line per stream, for progress output.
pub fn stream_line(r: &StreamResult) -> String {
    format!(
        "{} {}: {} of {} bytes in {:.1} s{}",
        r.vmm,
        direction_name(r.direction),
        r.got,
        r.expected,
        r.took.as_secs_f64(),
        r.error
            .as_deref()
            .map(|e| format!(", FAILED: {e}"))
            .unwrap_or_default()
    )
}

/// One row per stream, with KVM's exits and injected interrupts per MiB.
pub fn stream_table(results: &[StreamResult]) -> String {
    let mut out = String::from(
        "| vmm | dir | MiB | moved MiB | seconds | MiB/s | kvm exits/MiB | irqs/MiB | result |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let per_mib = |n: u64| {
            if r.got == 0 {
                "-".to_string()
            } else {
                format!("{:.0}", n as f64 / mib(r.got))
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.vmm,
            direction_name(r.direction),
            r.expected >> 20,
            mib(r.got),
            r.took.as_secs_f64(),
            mib(r.got) / r.took.as_secs_f64().max(f64::MIN_POSITIVE),
            r.kvm.map_or("-".into(), |k| per_mib(k.exits)),
            r.kvm.map_or("-".into(), |k| per_mib(k.irq_injections)),
            match (&r.error, &r.stall_report) {
                (None, _) => "ok",
                (Some(_), Some(_)) => "STALLED",
                (Some(_), None) => "FAILED",
            }
        );
    }
    out
}

/// Failures per VMM and direction, with the median throughput of the
/// streams that completed.
pub fn stream_summary(results: &[StreamResult]) -> String {
    let mut out = String::from(
        "\n| vmm | dir | streams | failed | of which stalled | p50 MiB/s (ok streams) |\n|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(&str, Direction)> = Vec::new();
    for r in results {
        if !keys.contains(&(r.vmm, r.direction)) {
            keys.push((r.vmm, r.direction));
        }
    }
    for (vmm, dir) in keys {
        let mine: Vec<&StreamResult> = results
            .iter()
            .filter(|r| r.vmm == vmm && r.direction == dir)
            .collect();
        let failed = mine.iter().filter(|r| r.error.is_some()).count();
        let stalled = mine.iter().filter(|r| r.stall_report.is_some()).count();
        let mut rates: Vec<f64> = mine
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| mib(r.got) / r.took.as_secs_f64().max(f64::MIN_POSITIVE))
            .collect();
        rates.sort_by(f64::total_cmp);
        let p50 = rates
            .get(rates.len().saturating_sub(1) / 2)
            .map_or("-".into(), |r| format!("{r:.1}"));
        let _ = writeln!(
            out,
            "| {vmm} | {} | {} | {failed} | {stalled} | {p50} |",
            direction_name(dir),
            mine.len()
        );
    }
    out
}
