//! Density (issue 12): idle sandboxes of the benchmark guest held at once,
//! restored clones of one template snapshot against booted VMs, started
//! a few at a time until a host memory budget is used (the drop of the
//! host's MemAvailable, so page cache, tmpfs and kernel memory count), a
//! count is reached, or no VM of a batch starts (single failures are
//! counted). Reported: how many fit, host memory per VM, and each VM's
//! RSS/PSS (guest RAM vs kiln-vmm's own).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::vm_process::{SpawnOptions, VmProcess, VmSpec};
use serde_json::json;

use crate::clones::{end_all, ready, Template};
use crate::fanout::memory_figures;
use crate::peer::BOOT_TIMEOUT;
use crate::procmem::{mem_available_kib, vm_mem};
use crate::results::{Results, Series};
use crate::vm::GuestArgs;

/// `kiln-bench density` arguments.
#[derive(clap::Args)]
pub struct DensityArgs {
    /// Most clones held.
    #[arg(long, default_value_t = 100)]
    max_vms: usize,
    /// Most booted VMs held (default: `--max-vms`).
    #[arg(long)]
    max_booted: Option<usize>,
    /// Host memory the VMs may use, MiB (drop of MemAvailable from before
    /// the first VM, the snapshot included); 0: 80% of MemAvailable.
    #[arg(long, default_value_t = 0)]
    budget_mib: u64,
    /// VMs started at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Longest one VM may take to be ready, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Skip the booted VMs (clones only).
    #[arg(long)]
    clones_only: bool,
    #[command(flatten)]
    guest: GuestArgs,
}

/// How VMs of one kind start.
#[derive(Clone)]
enum Kind {
    Clones(Arc<Template>),
    Booted(Arc<VmSpec>),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Clones(_) => "kiln clones",
            Kind::Booted(_) => "kiln booted",
        }
    }

    async fn start(&self, timeout: Duration) -> Result<(VmProcess, Duration)> {
        match self {
            Kind::Clones(t) => t.clone_ready(timeout).await,
            Kind::Booted(spec) => ready(spec, None, &SpawnOptions::default(), timeout).await,
        }
    }
}

/// Why filling stopped.
fn stop_reason(held: usize, max: usize, used_kib: u64, budget_kib: u64) -> Option<String> {
    if held >= max {
        Some(format!("reached --max-vms {max}"))
    } else if used_kib >= budget_kib {
        Some(format!(
            "memory budget used ({} of {} MiB)",
            used_kib >> 10,
            budget_kib >> 10
        ))
    } else {
        None
    }
}

/// Fills with VMs of `kind`, records, ends them all.
async fn fill(
    args: &DensityArgs,
    max: usize,
    kind: &Kind,
    baseline_kib: u64,
    budget_kib: u64,
    results: &mut Results,
) -> Result<()> {
    let guest_kib = args.guest.guest_kib();
    // Let the memory of VMs that just ended (the template's) come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = mem_available_kib().context("no MemAvailable in /proc/meminfo")?;
    let started = Instant::now();
    let mut vms: Vec<VmProcess> = Vec::new();
    let mut series = Series::new("density", kind.name(), "spawn -> agent ready while filling");
    let reason = loop {
        let used = baseline_kib.saturating_sub(mem_available_kib().unwrap_or(0));
        if let Some(r) = stop_reason(vms.len(), max, used, budget_kib) {
            break r;
        }
        let batch = args.parallel.min(max - vms.len());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let kind = kind.clone();
            let timeout = Duration::from_secs(args.timeout);
            set.spawn(async move { kind.start(timeout).await });
        }
        let (mut failed, mut started_any) = (None, false);
        while let Some(joined) = set.join_next().await {
            match joined.map_err(anyhow::Error::new).and_then(|r| r) {
                Ok((vm, t)) => {
                    vms.push(vm);
                    series.samples.push(t);
                    started_any = true;
                }
                Err(e) => {
                    series.failures += 1;
                    eprintln!("{}: a start FAILED: {e:#}", kind.name());
                    failed = Some(format!("{e:#}"));
                }
            }
        }
        // A lone failure is counted (the testbed crashes a guest now and
        // then); a batch of which nothing started means nothing more fits.
        if let (Some(e), false) = (&failed, started_any) {
            break format!("no VM of a batch started: {e}");
        }
        eprintln!(
            "{}: {} held, {} MiB used",
            kind.name(),
            vms.len(),
            baseline_kib.saturating_sub(mem_available_kib().unwrap_or(0)) >> 10
        );
    };
    let fill_time = started.elapsed();
    // Idle: let boot-time work finish before memory is read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = mem_available_kib().unwrap_or(before);
    let memory: Vec<_> = vms.iter().map(|vm| vm_mem(vm.pid(), guest_kib)).collect();
    let held = vms.len();
    end_all(vms).await;
    eprintln!("{}: stopped at {held}: {reason}", kind.name());
    let name = kind.name();
    results.push(series);
    results.figure(format!("{name}: idle VMs held"), held as f64, "VMs");
    results.figure(
        format!("{name}: seconds to fill"),
        fill_time.as_secs_f64(),
        "s",
    );
    if held > 0 {
        results.figure(
            format!("{name}: host memory (MemAvailable drop) per idle VM"),
            before.saturating_sub(after) as f64 / held as f64 / 1024.0,
            "MiB",
        );
    }
    memory_figures(results, name, &memory);
    results
        .params
        .as_object_mut()
        .map(|p| p.insert(format!("{name} stop"), json!(reason)));
    Ok(())
}

/// Runs the scenario and prints its results.
pub fn run(args: DensityArgs) -> Result<()> {
    if args.parallel == 0 || args.max_vms == 0 {
        bail!("--parallel and --max-vms must be at least 1");
    }
    let spec = args.guest.spec();
    let rt = crate::vm::runtime()?;
    let results = rt.block_on(measure(&args, &spec))?;
    println!(
        "density: idle {} MiB VMs held at once, started {} at a time; host memory is the drop of MemAvailable",
        args.guest.mem_mib, args.parallel
    );
    results.print();
    Ok(())
}

async fn measure(args: &DensityArgs, spec: &VmSpec) -> Result<Results> {
    let baseline = mem_available_kib().context("no MemAvailable in /proc/meminfo")?;
    let budget_kib = if args.budget_mib == 0 {
        baseline / 10 * 8
    } else {
        args.budget_mib << 10
    };
    let mut results = Results::new(
        "density",
        json!({"max_vms": args.max_vms, "max_booted": args.max_booted, "budget_mib": budget_kib >> 10, "parallel": args.parallel, "mem_mib": args.guest.mem_mib}),
    );
    let template = Arc::new(Template::make(spec, "density", BOOT_TIMEOUT).await?);
    results.figure(
        "template snapshot on the host (MemAvailable drop)",
        baseline.saturating_sub(mem_available_kib().unwrap_or(baseline)) as f64 / 1024.0,
        "MiB",
    );
    let clones = Kind::Clones(template);
    fill(
        args,
        args.max_vms,
        &clones,
        baseline,
        budget_kib,
        &mut results,
    )
    .await?;
    // The snapshot goes with the last reference to the template.
    drop(clones);
    if !args.clones_only {
        let baseline = mem_available_kib().unwrap_or(baseline);
        let booted = Kind::Booted(Arc::new(spec.clone()));
        let max = args.max_booted.unwrap_or(args.max_vms);
        fill(args, max, &booted, baseline, budget_kib, &mut results).await?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filling_stops_at_the_count_or_the_budget() {
        assert_eq!(stop_reason(3, 10, 100, 1000), None);
        assert!(stop_reason(10, 10, 100, 1000).is_some_and(|r| r.contains("--max-vms 10")));
        assert!(stop_reason(3, 10, 2048, 1024).is_some_and(|r| r.contains("2 of 1 MiB")));
    }
}
