//! Clone fan-out (issue 12): from one template snapshot, `k` clones are
//! restored at once; each is timed from its spawn to its agent ready
//! (after the resume reseed), the round from its first spawn to the last
//! clone ready; failures are counted. With every clone of a round up, the
//! host memory of each is read (RSS/PSS, shared vs private, guest RAM vs
//! kiln-vmm's own) before all are ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::vm_process::VmProcess;
use serde_json::json;

use crate::clones::{end, end_all, Template};
use crate::procmem::{mem_available_kib, vm_mem, MemSplit};
use crate::results::{Results, Series};
use crate::vm::GuestArgs;

/// `kiln-bench fanout` arguments.
#[derive(clap::Args)]
pub struct FanoutArgs {
    /// Clones restored at once, per fan-out (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    sizes: Vec<usize>,
    /// Counted rounds per fan-out, in the order of `--sizes`.
    #[arg(long, value_delimiter = ',', default_value = "10,3")]
    rounds: Vec<usize>,
    /// Single restores before counting (they warm the snapshot file's pages).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Longest a clone may take to be ready, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    guest: GuestArgs,
}

/// One round: per-clone times, the time until all were ready, failures,
/// each clone's memory and the host's MemAvailable drop, KiB.
struct Round {
    ready: Vec<Duration>,
    all_ready: Option<Duration>,
    failures: Vec<String>,
    memory: Vec<MemSplit>,
    host_drop_kib: Option<u64>,
}

async fn round(template: &Arc<Template>, k: usize, timeout: Duration, guest_kib: u64) -> Round {
    let before = mem_available_kib();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..k {
        let template = Arc::clone(template);
        set.spawn(async move { template.clone_ready(timeout).await });
    }
    let (mut vms, mut ready, mut failures) = (Vec::<VmProcess>::new(), Vec::new(), Vec::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((vm, took))) => {
                vms.push(vm);
                ready.push(took);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("clone task: {e}")),
        }
    }
    let all_ready = failures.is_empty().then(|| start.elapsed());
    // Settle: what a clone holds once it idles after answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let memory = vms.iter().map(|vm| vm_mem(vm.pid(), guest_kib)).collect();
    let host_drop_kib = before
        .zip(mem_available_kib())
        .map(|(b, a)| b.saturating_sub(a));
    end_all(vms).await;
    Round {
        ready,
        all_ready,
        failures,
        memory,
        host_drop_kib,
    }
}

/// The median of `values` (0 when empty).
pub fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// Adds the per-VM memory figures (p50 over `memory`, MiB) to `results`.
pub fn memory_figures(results: &mut Results, label: &str, memory: &[MemSplit]) {
    if memory.is_empty() {
        return;
    }
    let p50 = |f: fn(&MemSplit) -> u64| median(memory.iter().map(f).collect()) as f64 / 1024.0;
    type Field = fn(&MemSplit) -> u64;
    let rows: [(&str, Field); 8] = [
        ("RSS", |m| m.guest.rss + m.own.rss),
        ("PSS", |m| m.guest.pss + m.own.pss),
        ("guest RAM RSS", |m| m.guest.rss),
        ("guest RAM private (copied on write)", |m| m.guest.private),
        ("guest RAM shared (snapshot pages)", |m| m.guest.shared),
        ("kiln-vmm own RSS (beyond guest RAM)", |m| m.own.rss),
        ("kiln-vmm own PSS", |m| m.own.pss),
        ("kiln-vmm own private", |m| m.own.private),
    ];
    for (name, f) in rows {
        results.figure(format!("{label}: {name} per VM, p50"), p50(f), "MiB");
    }
}

/// Runs the scenario and prints its results.
pub fn run(args: FanoutArgs) -> Result<()> {
    if args.sizes.is_empty() || args.sizes.len() != args.rounds.len() {
        bail!("--sizes and --rounds need the same, non-zero number of entries");
    }
    if args.sizes.contains(&0) {
        bail!("a fan-out of 0 clones measures nothing");
    }
    let spec = args.guest.spec();
    let rt = crate::vm::runtime()?;
    let results = rt.block_on(async {
        let timeout = Duration::from_secs(args.timeout);
        let template = Arc::new(Template::make(&spec, "fanout", timeout).await?);
        measure(&args, &template, timeout).await
    })?;
    println!(
        "clone fan-out: {} MiB guests, 1 vCPU; clone time is spawn -> agent ready (resume included), all-ready is the first spawn -> the last clone ready",
        args.guest.mem_mib
    );
    results.print();
    Ok(())
}

async fn measure(
    args: &FanoutArgs,
    template: &Arc<Template>,
    timeout: Duration,
) -> Result<Results> {
    let guest_kib = args.guest.guest_kib();
    for i in 0..args.warmup {
        let (vm, t) = template
            .clone_ready(timeout)
            .await
            .with_context(|| format!("warm-up restore {i}"))?;
        end(vm).await;
        eprintln!("warm-up #{i}: {t:?}");
    }
    let mut results = Results::new(
        "fanout",
        json!({"sizes": args.sizes, "rounds": args.rounds, "mem_mib": args.guest.mem_mib, "warmup": args.warmup}),
    );
    for (&k, &rounds) in args.sizes.iter().zip(&args.rounds) {
        let scenario = format!("fanout-{k}");
        let mut per_clone = Series::new(&scenario, "kiln", "clone spawn -> agent ready");
        let mut all = Series::new(&scenario, "kiln", &format!("all {k} ready"));
        let (mut memory, mut drops) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let got = round(template, k, timeout, guest_kib).await;
            // The whole round on stderr, so a testbed that dies mid-run
            // still leaves the rounds before.
            let mib = |f: fn(&MemSplit) -> u64| {
                median(got.memory.iter().map(f).collect()) as f64 / 1024.0
            };
            eprintln!(
                "fan-out {k} #{r}: {} ready, {} failed, all ready {:?}; per clone p50 {:?} max {:?}; per clone p50 PSS {:.2} MiB, guest private {:.2} MiB, own RSS {:.2} MiB, own PSS {:.2} MiB",
                got.ready.len(),
                got.failures.len(),
                got.all_ready,
                crate::stats::summarize(&got.ready).map(|s| s.p50),
                got.ready.iter().max(),
                mib(|m| m.guest.pss + m.own.pss),
                mib(|m| m.guest.private),
                mib(|m| m.own.rss),
                mib(|m| m.own.pss),
            );
            for f in &got.failures {
                eprintln!("  FAILED: {f}");
            }
            per_clone.samples.extend(got.ready);
            per_clone.failures += got.failures.len();
            match got.all_ready {
                Some(t) => all.samples.push(t),
                None => all.failures += 1,
            }
            if let Some(d) = got.host_drop_kib.filter(|_| !got.memory.is_empty()) {
                drops.push(d / got.memory.len() as u64);
            }
            memory.extend(got.memory);
        }
        results.push(per_clone);
        results.push(all);
        memory_figures(&mut results, &scenario, &memory);
        if !drops.is_empty() {
            results.figure(
                format!("{scenario}: host MemAvailable drop per clone, p50 of rounds"),
                median(drops) as f64 / 1024.0,
                "MiB",
            );
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median(vec![4, 1, 3, 2]), 2);
        assert_eq!(median(Vec::new()), 0);
    }
}
