//! Clone fan-out (issue 12): from one template snapshot, `k` clones are
//! restored at once; each is timed from its spawn to its agent ready
//! (after the resume reseed), the round from its first spawn to the last
//! clone ready; failures are counted. With every clone of a round up, the
//! host memory of each is read (RSS/PSS, shared vs private, guest RAM vs
//! kiln-vmm's own) before all are ended. With `--firecracker`, each
//! round is followed by the same fan-out of Firecracker restores of the
//! same guest (its own snapshot), held at once the same way: the control
//! for failures that come only with many VMs at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::vm_process::VmProcess;
use serde_json::json;

use crate::clones::{end, end_all, Template};
use crate::peer::firecracker::Firecracker;
use crate::peer::firecracker_snapshot::{FcClone, FcSnapshot};
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
    /// Firecracker binary: after each kiln round, the same fan-out of
    /// Firecracker restores of the same guest (omit to skip).
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// Run each round's Firecracker restores before kiln's (so a failure
    /// that ends the whole run shows which VMM's load came first).
    #[arg(long)]
    peer_first: bool,
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

/// Waits for every clone task of a round started at `start` (with
/// MemAvailable `before`), lets the clones settle, reads each one's memory
/// (`pid_of`), and hands them back with the round's figures.
async fn collect<T: 'static, E: std::fmt::Display + 'static>(
    mut set: tokio::task::JoinSet<Result<(T, Duration), E>>,
    start: Instant,
    before: Option<u64>,
    guest_kib: u64,
    pid_of: impl Fn(&T) -> u32,
) -> (Vec<T>, Round) {
    let (mut clones, mut ready, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((clone, took))) => {
                clones.push(clone);
                ready.push(took);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("clone task: {e}")),
        }
    }
    let all_ready = failures.is_empty().then(|| start.elapsed());
    // Settle: what a clone holds once it idles after answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let memory = clones
        .iter()
        .map(|c| vm_mem(pid_of(c), guest_kib))
        .collect();
    let host_drop_kib = before
        .zip(mem_available_kib())
        .map(|(b, a)| b.saturating_sub(a));
    let round = Round {
        ready,
        all_ready,
        failures,
        memory,
        host_drop_kib,
    };
    (clones, round)
}

/// A kiln round: `k` clones of `template` restored at once, held until all
/// have answered (or failed), then ended.
async fn round(template: &Arc<Template>, k: usize, timeout: Duration, guest_kib: u64) -> Round {
    let (before, start) = (mem_available_kib(), Instant::now());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..k {
        let template = Arc::clone(template);
        set.spawn(async move { template.clone_ready(timeout).await });
    }
    let (vms, round) = collect(set, start, before, guest_kib, VmProcess::pid).await;
    end_all(vms).await;
    round
}

/// The Firecracker peer of a round: `k` restores of `fc` at once, held the
/// same way, then ended by pid.
async fn fc_round(
    fc: &Arc<FcSnapshot>,
    next: &Arc<AtomicUsize>,
    k: usize,
    guest_kib: u64,
) -> Round {
    let (before, start) = (mem_available_kib(), Instant::now());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..k {
        let (fc, i) = (Arc::clone(fc), next.fetch_add(1, Ordering::Relaxed));
        set.spawn_blocking(move || fc.restore_held(i));
    }
    let (clones, round) = collect(set, start, before, guest_kib, FcClone::pid).await;
    drop(clones);
    round
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
    let rows: [(&str, Field); 10] = [
        ("RSS", |m| m.guest.rss + m.own.rss),
        ("PSS", |m| m.guest.pss + m.own.pss),
        ("guest RAM RSS", |m| m.guest.rss),
        ("guest RAM anonymous (a clone's copied on write)", |m| {
            m.guest.anon
        }),
        (
            "guest RAM file-backed (a clone's snapshot page cache)",
            |m| m.guest.rss.saturating_sub(m.guest.anon),
        ),
        ("guest RAM private (mapped by this VM only)", |m| {
            m.guest.private
        }),
        ("guest RAM shared (mapped by other VMs too)", |m| {
            m.guest.shared
        }),
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
        let fc = match &args.firecracker {
            Some(binary) => {
                let peer = Firecracker::for_guest(binary, &args.guest, &template.dir);
                let snapshot =
                    tokio::task::spawn_blocking(move || FcSnapshot::make(&peer, &peer.scratch))
                        .await
                        .context("firecracker snapshot task")?
                        .context("firecracker snapshot")?;
                Some(Arc::new(snapshot))
            }
            None => None,
        };
        measure(&args, &template, fc.as_ref(), timeout).await
    })?;
    println!(
        "clone fan-out: {} MiB guests, 1 vCPU; clone time is spawn -> agent ready (resume included), all-ready is the first spawn -> the last clone ready",
        args.guest.mem_mib
    );
    results.print();
    Ok(())
}

/// One VMM's rounds of one fan-out size, accumulated.
struct Tally {
    vmm: &'static str,
    per_clone: Series,
    all: Series,
    memory: Vec<MemSplit>,
    drops: Vec<u64>,
}

impl Tally {
    fn new(scenario: &str, vmm: &'static str, k: usize) -> Tally {
        Tally {
            vmm,
            per_clone: Series::new(scenario, vmm, "clone spawn -> agent ready"),
            all: Series::new(scenario, vmm, &format!("all {k} ready")),
            memory: Vec::new(),
            drops: Vec::new(),
        }
    }

    /// Prints round `r` on stderr (so a testbed that dies mid-run still
    /// leaves the rounds before) and adds it.
    fn add(&mut self, k: usize, r: usize, got: Round) {
        let mib =
            |f: fn(&MemSplit) -> u64| median(got.memory.iter().map(f).collect()) as f64 / 1024.0;
        eprintln!(
            "{} fan-out {k} #{r}: {} ready, {} failed, all ready {:?}; per clone p50 {:?} max {:?}; per clone p50 PSS {:.2} MiB, guest copied on write {:.2} MiB, own RSS {:.2} MiB, own PSS {:.2} MiB",
            self.vmm,
            got.ready.len(),
            got.failures.len(),
            got.all_ready,
            crate::stats::summarize(&got.ready).map(|s| s.p50),
            got.ready.iter().max(),
            mib(|m| m.guest.pss + m.own.pss),
            mib(|m| m.guest.anon),
            mib(|m| m.own.rss),
            mib(|m| m.own.pss),
        );
        for f in &got.failures {
            eprintln!("  {} FAILED: {f}", self.vmm);
        }
        self.per_clone.samples.extend(got.ready);
        self.per_clone.failures += got.failures.len();
        match got.all_ready {
            Some(t) => self.all.samples.push(t),
            None => self.all.failures += 1,
        }
        if let Some(d) = got.host_drop_kib.filter(|_| !got.memory.is_empty()) {
            self.drops.push(d / got.memory.len() as u64);
        }
        self.memory.extend(got.memory);
    }

    fn finish(self, results: &mut Results, scenario: &str) {
        let label = match self.vmm {
            "kiln" => scenario.to_string(),
            vmm => format!("{scenario} {vmm}"),
        };
        results.push(self.per_clone);
        results.push(self.all);
        memory_figures(results, &label, &self.memory);
        if !self.drops.is_empty() {
            results.figure(
                format!("{label}: host MemAvailable drop per clone, p50 of rounds"),
                median(self.drops) as f64 / 1024.0,
                "MiB",
            );
        }
    }
}

async fn measure(
    args: &FanoutArgs,
    template: &Arc<Template>,
    fc: Option<&Arc<FcSnapshot>>,
    timeout: Duration,
) -> Result<Results> {
    let guest_kib = args.guest.guest_kib();
    let next_fc = Arc::new(AtomicUsize::new(0));
    for i in 0..args.warmup {
        let (vm, t) = template
            .clone_ready(timeout)
            .await
            .with_context(|| format!("warm-up restore {i}"))?;
        end(vm).await;
        eprintln!("warm-up #{i}: {t:?}");
        if let Some(fc) = fc {
            let (fc, n) = (Arc::clone(fc), next_fc.fetch_add(1, Ordering::Relaxed));
            let t = tokio::task::spawn_blocking(move || fc.restore_once(n))
                .await
                .context("firecracker warm-up task")?
                .with_context(|| format!("firecracker warm-up restore {i}"))?;
            eprintln!("firecracker warm-up #{i}: {t:?}");
        }
    }
    let mut results = Results::new(
        "fanout",
        json!({"sizes": args.sizes, "rounds": args.rounds, "mem_mib": args.guest.mem_mib, "warmup": args.warmup, "firecracker": fc.is_some()}),
    );
    for (&k, &rounds) in args.sizes.iter().zip(&args.rounds) {
        let scenario = format!("fanout-{k}");
        let mut kiln = Tally::new(&scenario, "kiln", k);
        let mut peer = fc.map(|_| Tally::new(&scenario, "firecracker", k));
        for r in 0..rounds {
            if !args.peer_first {
                kiln.add(k, r, round(template, k, timeout, guest_kib).await);
            }
            if let (Some(fc), Some(peer)) = (fc, peer.as_mut()) {
                peer.add(k, r, fc_round(fc, &next_fc, k, guest_kib).await);
            }
            if args.peer_first {
                kiln.add(k, r, round(template, k, timeout, guest_kib).await);
            }
        }
        kiln.finish(&mut results, &scenario);
        if let Some(peer) = peer {
            peer.finish(&mut results, &scenario);
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
