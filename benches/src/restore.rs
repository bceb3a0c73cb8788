//! Snapshot restore against cold boot, in one run (issue 12): a template
//! VM is booted and snapshotted once; then cold boots and restores of that
//! snapshot alternate, each timed from spawn to the agent's first answer
//! (a restore's includes the resume request: fresh RNG seed, host time).
//! With `--firecracker`, Firecracker's own snapshot of the same guest is
//! restored in the same rounds, timed to the same point.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln::vm_process::SpawnOptions;
use serde_json::json;

use crate::clones::{end, ready, Template};
use crate::fanout::memory_figures;
use crate::peer::firecracker::Firecracker;
use crate::peer::firecracker_snapshot::FcSnapshot;
use crate::peer::BOOT_TIMEOUT;
use crate::procmem::vm_mem;
use crate::results::{Results, Series};
use crate::vm::GuestArgs;

/// `kiln-bench restore` arguments.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Counted cold boots and restores (each), alternating.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Rounds before counting (they warm the snapshot files' pages).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    guest: GuestArgs,
    /// Firecracker binary: restore its snapshot of the same guest as the
    /// peer (omit to skip).
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// Also restore with kiln-vmm's jail off, in the same rounds: what the
    /// jail costs a restore (Firecracker runs without its jailer here).
    #[arg(long)]
    jail_compare: bool,
    /// Firecracker's jailer: also restore Firecracker's snapshot through
    /// it (chroot, cgroup, unprivileged uid), in the same rounds, as the
    /// like-for-like peer of kiln's jailed restore. Needs a static
    /// Firecracker build (the chroot holds no libraries) and root.
    #[arg(long, value_name = "PATH", requires = "firecracker")]
    firecracker_jailer: Option<PathBuf>,
    /// Another kiln-vmm build (say, main's) restoring the same snapshot in
    /// the same rounds as `kiln-baseline`: a change's before and after in
    /// one run. It must read this build's snapshot format.
    #[arg(long, value_name = "PATH")]
    baseline_kiln_vmm: Option<PathBuf>,
}

/// Runs the scenario and prints its results.
pub fn run(args: RestoreArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    if args.firecracker_jailer.is_some() {
        crate::root_move::off_the_initramfs()
            .context("moving the root off the initramfs for Firecracker's jailer")?;
    }
    let results = measure(&args)?;
    println!(
        "snapshot restore vs cold boot, {} of each alternating after {} warm-up round(s), 1 vCPU, {} MiB; spawn -> agent ready (a restore includes its resume request, for Firecracker too)",
        args.n, args.warmup, args.guest.mem_mib
    );
    results.print();
    Ok(())
}

fn measure(args: &RestoreArgs) -> Result<Results> {
    let spec = args.guest.spec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let template = rt.block_on(Template::make(&spec, "restore", BOOT_TIMEOUT))?;
    let fc = match &args.firecracker {
        Some(binary) => {
            let peer = Firecracker::for_guest(binary, &args.guest, &template.dir);
            Some(FcSnapshot::make(&peer, &peer.scratch).context("firecracker snapshot")?)
        }
        None => None,
    };
    // The jailed peer restores its own copy of the same snapshot.
    let fc_jailed = match (&args.firecracker, &args.firecracker_jailer) {
        (Some(binary), Some(jailer)) => {
            let mut peer = Firecracker::for_guest(binary, &args.guest, &template.dir);
            peer.scratch = peer.scratch.with_file_name("firecracker-jailed");
            let snapshot =
                FcSnapshot::make(&peer, &peer.scratch).context("firecracker snapshot (jailed)")?;
            Some(
                snapshot
                    .with_jailer(jailer, args.guest.mem_mib)
                    .context("firecracker jailer")?,
            )
        }
        _ => None,
    };
    let mut results = Results::new(
        "restore",
        json!({"n": args.n, "warmup": args.warmup, "jail_compare": args.jail_compare, "mem_mib": args.guest.mem_mib, "firecracker": fc.is_some(), "firecracker_jailer": fc_jailed.is_some()}),
    );
    let cold = results.push(Series::new("restore", "kiln", "cold boot -> agent ready"));
    let restored =
        results.push(Series::new("restore", "kiln", "restore -> agent ready").against(cold));
    let fc_restored = fc.as_ref().map(|_| {
        results
            .push(Series::new("restore", "firecracker", "restore -> agent ready").against(restored))
    });
    let fc_jailed_restored = fc_jailed.as_ref().map(|_| {
        results.push(
            Series::new("restore", "firecracker-jailer", "restore -> agent ready")
                .against(restored),
        )
    });
    // Other kiln-vmm set-ups restoring the same snapshot in the same
    // rounds: without the jail, another build.
    let mut variants = Vec::new();
    if args.jail_compare {
        let mut spec = spec.clone();
        spec.config.jail.enabled = false;
        variants.push((spec, "kiln-nojail", "restore without jail"));
    }
    if let Some(vmm) = &args.baseline_kiln_vmm {
        let mut spec = spec.clone();
        spec.vmm = vmm.clone();
        variants.push((spec, "kiln-baseline", "baseline restore"));
    }
    let variants: Vec<_> = variants
        .into_iter()
        .map(|(spec, peer, what)| {
            let series = results
                .push(Series::new("restore", peer, "restore -> agent ready").against(restored));
            (spec, series, what)
        })
        .collect();
    let guest_kib = args.guest.guest_kib();
    let mut memory = Vec::new();
    let plain = SpawnOptions::default();
    for i in 0..args.warmup + args.n {
        let counted = i >= args.warmup;
        let mut line = format!("#{i}{}:", if counted { "" } else { " (warm-up)" });
        let r = rt.block_on(async {
            let (vm, t) = ready(&spec, None, &plain, BOOT_TIMEOUT).await?;
            end(vm).await;
            Ok::<_, anyhow::Error>(t)
        });
        record(&mut results.series[cold], counted, r, &mut line, "cold");
        let r = rt.block_on(async {
            let (vm, t) = template.clone_ready(BOOT_TIMEOUT).await?;
            // Settle: what a clone holds once it idles after answering.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mem = vm_mem(vm.pid(), guest_kib);
            end(vm).await;
            Ok::<_, anyhow::Error>((t, mem))
        });
        let r = r.map(|(t, mem)| {
            if counted {
                memory.push(mem);
            }
            t
        });
        record(
            &mut results.series[restored],
            counted,
            r,
            &mut line,
            "restore",
        );
        for (spec, s, what) in &variants {
            let r = rt.block_on(async {
                let (vm, t) = ready(spec, Some(&template.dir), &plain, BOOT_TIMEOUT).await?;
                end(vm).await;
                Ok::<_, anyhow::Error>(t)
            });
            record(&mut results.series[*s], counted, r, &mut line, what);
        }
        let firecrackers = [
            (&fc, fc_restored, "firecracker restore"),
            (
                &fc_jailed,
                fc_jailed_restored,
                "firecracker restore with its jailer",
            ),
        ];
        for (fc, series, what) in firecrackers {
            if let (Some(fc), Some(s)) = (fc, series) {
                let r = fc.restore_once(i).map_err(anyhow::Error::new);
                record(&mut results.series[s], counted, r, &mut line, what);
            }
        }
        eprintln!("{line}");
    }
    drop(template);
    memory_figures(&mut results, "restored clone", &memory);
    Ok(results)
}

/// Adds a counted sample or failure to `series`, and to the progress line.
fn record(
    series: &mut Series,
    counted: bool,
    outcome: Result<Duration>,
    line: &mut String,
    what: &str,
) {
    match outcome {
        Ok(t) => {
            line.push_str(&format!(" {what} {t:?}"));
            if counted {
                series.samples.push(t);
            }
        }
        Err(e) => {
            line.push_str(&format!(" {what} FAILED: {e:#};"));
            if counted {
                series.failures += 1;
            }
        }
    }
}
