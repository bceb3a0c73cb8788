//! Snapshot restore against cold boot, in one run (issue 12): a template
//! VM is booted and snapshotted once; then cold boots and restores of that
//! snapshot alternate, each timed from spawn to the agent's first answer
//! (a restore's includes the resume request: fresh RNG seed, host time).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::vm_process::{SpawnOptions, VmProcess, VmSpec};

use crate::peer::BOOT_TIMEOUT;
use crate::report;

/// `kiln-bench restore` arguments.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Cold boots and restores (each), alternating.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Guest kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initramfs: PathBuf,
    /// kiln-vmm binary.
    #[arg(long)]
    kiln_vmm: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
}

/// Resident memory of a VMM process, KiB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    /// File-backed and shared (a memory file on tmpfs is shared memory).
    file: u64,
}

/// The jailed VMM (the supervisor's child, when there is one) and its RSS.
fn vmm_rss(supervisor: u32) -> Option<Rss> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    let pid = children
        .split_whitespace()
        .next()
        .map_or(supervisor.to_string(), str::to_string);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")? + field("RssShmem:")?,
    })
}

/// Spawns (or restores), waits for the agent, returns the VM and the time.
async fn ready(
    spec: &VmSpec,
    restore: Option<&Path>,
    options: &SpawnOptions,
) -> Result<(VmProcess, Duration)> {
    let start = Instant::now();
    let vm = match restore {
        Some(dir) => VmProcess::restore(spec, dir, options)?,
        None => VmProcess::spawn(spec, options)?,
    };
    vm.wait_ready(BOOT_TIMEOUT)
        .await
        .with_context(|| format!("waiting for the agent ({})", vm.vmm_report()))?;
    Ok((vm, start.elapsed()))
}

async fn end(vm: VmProcess) {
    let _ = vm.kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), vm.wait()).await;
}

/// Runs the scenario and prints its table.
pub fn run(args: RestoreArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let spec = crate::vm::spec(
        &args.kiln_vmm,
        &args.kernel,
        &args.initramfs,
        args.mem_mib,
        &[],
    );
    let scratch = std::env::temp_dir().join(format!("kiln-bench-restore-{}", std::process::id()));
    let snapshot_dir = scratch.join("snapshot");
    std::fs::create_dir_all(&snapshot_dir)
        .with_context(|| format!("creating {}", snapshot_dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(measure(&args, &spec, &snapshot_dir));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn measure(args: &RestoreArgs, spec: &VmSpec, snapshot_dir: &Path) -> Result<()> {
    let template = SpawnOptions {
        snapshot_dir: Some(snapshot_dir.to_path_buf()),
        ..SpawnOptions::default()
    };
    let (source, _) = ready(spec, None, &template).await?;
    let snap = source
        .snapshot(false, Duration::from_secs(300))
        .await
        .context("snapshot")?;
    end(source).await;
    eprintln!(
        "snapshot: {:.1} ms (vCPUs paused in {:.1} ms), {} MiB of guest memory written, state {} KiB",
        snap.total_us as f64 / 1000.0,
        snap.pause_us as f64 / 1000.0,
        snap.memory_bytes_written >> 20,
        snap.state_bytes >> 10
    );
    let plain = SpawnOptions::default();
    let (mut cold, mut restored, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.n {
        let (vm, t) = ready(spec, None, &plain)
            .await
            .with_context(|| format!("cold boot {i}"))?;
        end(vm).await;
        cold.push(t);
        let (vm, r) = ready(spec, Some(snapshot_dir), &plain)
            .await
            .with_context(|| format!("restore {i}"))?;
        // Settle: what a clone holds once it idles after answering.
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss.extend(vmm_rss(vm.pid()));
        end(vm).await;
        restored.push(r);
        eprintln!("#{i}: cold boot {t:?}, restore {r:?}");
    }
    println!(
        "snapshot restore vs cold boot, {} of each alternating, 1 vCPU, {} MiB; spawn -> agent ready (a restore includes its resume request)",
        args.n, args.mem_mib
    );
    print!("{}", report::restore_table(&cold, &restored));
    if let Some(last) = rss.last() {
        let p50 = |f: fn(&Rss) -> u64| {
            let mut v: Vec<u64> = rss.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        println!(
            "restored clone's VMM RSS p50: {} KiB total, {} KiB anonymous (private), {} KiB file/shared (the snapshot's memory file, shared between clones); last: {last:?}",
            p50(|r| r.total),
            p50(|r| r.anon),
            p50(|r| r.file),
        );
    }
    Ok(())
}
