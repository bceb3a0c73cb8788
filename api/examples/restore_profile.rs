//! Profiles snapshot restores step by step: boots a template VM,
//! snapshots it, then restores it `N` times (jailed, then without the
//! jail) and prints, per restore, when each step happened in milliseconds
//! after the spawn: `kiln-vmm`'s and its supervisor's `step:` debug lines
//! (from the VM's log), `VmProcess::wait_ready`'s (from this process), and
//! the first vCPU entry (from the timings report of a clean shutdown).
//! Then the median of each step over the counted restores.
//!
//! ```text
//! KILN_LOG=debug cargo run -p kiln --example restore_profile -- \
//!     KILN_VMM VMLINUX INITRAMFS [N]
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln::vm_process::{SpawnOptions, VmProcess, VmSpec};
use kiln_vmm::config::VmConfig;

/// What this process logs (its `wait_ready` steps), read back per restore.
static OWN_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const TIMEOUT: Duration = Duration::from_secs(60);

struct OwnLog;

impl Write for OwnLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        OWN_LOG
            .lock()
            .map_err(|_| std::io::Error::other("log lock poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The host's monotonic clock, microseconds (what `kiln-vmm` logs as `m<s>.<us>`).
fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

struct Mono;

impl tracing_subscriber::fmt::time::FormatTime for Mono {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let us = mono_us();
        write!(w, "m{}.{:06}", us / 1_000_000, us % 1_000_000)
    }
}

/// `(mono µs, step)` of every `step:` line in `text`.
fn steps(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let at = line.split_whitespace().find_map(|w| w.strip_prefix('m'))?;
            let (s, us) = at.split_once('.')?;
            let mono = s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?;
            let step = line.split_once("step: ")?.1;
            Some((mono, step.trim().to_string()))
        })
        .collect()
}

async fn profile_one(spec: &VmSpec, snapshot: &std::path::Path) -> Result<Vec<(String, f64)>> {
    OWN_LOG
        .lock()
        .map_err(|_| anyhow::anyhow!("log lock"))?
        .clear();
    let t0 = mono_us();
    let vm = VmProcess::restore(spec, snapshot, &SpawnOptions::default())?;
    let spawned = mono_us();
    vm.wait_ready(TIMEOUT).await.context("wait_ready")?;
    let ready = mono_us();
    let vmm_log = std::fs::read_to_string(vm.log_path()).unwrap_or_default();
    let exit = vm.shutdown(Duration::from_secs(10)).await?;
    let own = String::from_utf8_lossy(&OWN_LOG.lock().map_err(|_| anyhow::anyhow!("log lock"))?)
        .into_owned();
    let mut all = vec![(spawned, "spawn returned".to_string())];
    all.extend(steps(&vmm_log));
    all.extend(steps(&own));
    // The report counts from kiln-vmm's first instant, which its "main
    // entered" line places on the monotonic clock.
    let main_start = vmm_log
        .lines()
        .find(|l| l.contains("step: main entered"))
        .and_then(|l| {
            let mono = steps(l).first()?.0;
            let us = l
                .split(", ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some(mono - us)
        });
    if let (Some(start), Some(entry)) = (
        main_start,
        exit.report.as_ref().and_then(|r| r.kernel_entry_us),
    ) {
        all.push((start, "kiln-vmm main".into()));
        all.push((start + entry, "first vcpu entry".into()));
    }
    all.push((ready, "wait_ready returned".into()));
    all.sort();
    Ok(all
        .into_iter()
        .map(|(at, s)| (s, at.saturating_sub(t0) as f64 / 1000.0))
        .collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KILN_LOG"))
        .with_timer(Mono)
        .with_ansi(false)
        .with_writer(|| OwnLog)
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: restore_profile KILN_VMM VMLINUX INITRAMFS [N]");
    }
    let n: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let mut config = VmConfig::new(PathBuf::from(&args[2]));
    config.initramfs = Some(PathBuf::from(&args[3]));
    config.vcpus = 1;
    config.mem_mib = 256;
    let spec = VmSpec {
        vmm: PathBuf::from(&args[1]),
        config,
    };
    let scratch = std::env::temp_dir().join(format!("kiln-restore-profile-{}", std::process::id()));
    let snapshot = scratch.join("snapshot");
    std::fs::create_dir_all(&snapshot)?;
    let options = SpawnOptions {
        snapshot_dir: Some(snapshot.clone()),
        ..SpawnOptions::default()
    };
    let template = VmProcess::spawn(&spec, &options)?;
    template
        .wait_ready(TIMEOUT)
        .await
        .context("template boot")?;
    template.snapshot(false, TIMEOUT).await?;
    drop(template);
    let mut nojail = spec.clone();
    nojail.config.jail.enabled = false;
    for (name, spec) in [("jailed", &spec), ("no jail", &nojail)] {
        let mut by_step: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        // One warm-up restore (page cache, first cgroup), then N counted.
        for i in 0..=n {
            let run = profile_one(spec, &snapshot).await?;
            println!("{name} restore #{i}:");
            for (text, ms) in &run {
                println!("  {ms:9.1} ms  {text}");
                // The label: details after ", " or " (" vary per run.
                let step = &text[..text.find([',', '(']).unwrap_or(text.len())]
                    .trim()
                    .to_string();
                if i > 0 {
                    if !order.contains(step) {
                        order.push(step.clone());
                    }
                    by_step.entry(step.clone()).or_default().push(*ms);
                }
            }
        }
        println!("{name}: median over {n} restores, ms after the spawn:");
        let mut medians: Vec<(f64, String)> = order
            .into_iter()
            .filter_map(|step| {
                let mut v = by_step.remove(&step)?;
                v.sort_by(f64::total_cmp);
                Some((v[v.len() / 2], step))
            })
            .collect();
        medians.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (ms, step) in medians {
            println!("  {ms:9.1}  {step}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
