//! Clones of a template snapshot, shared by the restore, fan-out and
//! density scenarios: the template is booted, snapshotted once and ended;
//! each clone is a `VmProcess::restore` whose `wait_ready` includes the
//! resume request (fresh RNG seed, host time). Every VM started here is
//! ended by its own pid, on success, failure and timeout alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln::vm_process::{SpawnOptions, VmProcess, VmSpec};

/// How long ending one VM may take before it is left to the kernel.
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// A template snapshot in a scratch directory, removed on drop.
pub struct Template {
    /// The VM spec the snapshot was taken from (clones use it too).
    pub spec: VmSpec,
    /// The snapshot directory.
    pub dir: PathBuf,
    scratch: PathBuf,
}

impl Template {
    /// Boots `spec`, snapshots it once its agent answers, and ends it.
    pub async fn make(spec: &VmSpec, name: &str, timeout: Duration) -> Result<Template> {
        let scratch =
            std::env::temp_dir().join(format!("kiln-bench-{name}-{}", std::process::id()));
        let dir = scratch.join("snapshot");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let template = Template {
            spec: spec.clone(),
            dir,
            scratch,
        };
        let options = SpawnOptions {
            snapshot_dir: Some(template.dir.clone()),
            ..SpawnOptions::default()
        };
        let (source, _) = ready(spec, None, &options, timeout).await?;
        let snap = source.snapshot(false, timeout).await.context("snapshot");
        end(source).await;
        let snap = snap?;
        eprintln!(
            "snapshot: {:.1} ms (vCPUs paused in {:.1} ms), {} MiB of guest memory written, state {} KiB",
            snap.total_us as f64 / 1000.0,
            snap.pause_us as f64 / 1000.0,
            snap.memory_bytes_written >> 20,
            snap.state_bytes >> 10
        );
        Ok(template)
    }

    /// Starts a clone and waits for its agent (and resume).
    pub async fn clone_ready(&self, timeout: Duration) -> Result<(VmProcess, Duration)> {
        ready(
            &self.spec,
            Some(&self.dir),
            &SpawnOptions::default(),
            timeout,
        )
        .await
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Spawns (or restores from `restore`), waits for the agent, returns the
/// VM and the time from just before the spawn. On failure the VM is ended
/// before the error returns.
pub async fn ready(
    spec: &VmSpec,
    restore: Option<&Path>,
    options: &SpawnOptions,
    timeout: Duration,
) -> Result<(VmProcess, Duration)> {
    let start = Instant::now();
    let vm = match restore {
        Some(dir) => VmProcess::restore(spec, dir, options)?,
        None => VmProcess::spawn(spec, options)?,
    };
    match vm.wait_ready(timeout).await {
        Ok(_) => Ok((vm, start.elapsed())),
        Err(e) => {
            let report = vm.vmm_report();
            end(vm).await;
            Err(anyhow::Error::new(e).context(format!("waiting for the agent ({report})")))
        }
    }
}

/// Kills the VM (SIGKILL through its pidfd) and reaps it.
pub async fn end(vm: VmProcess) {
    let _ = vm.kill();
    let _ = tokio::time::timeout(END_TIMEOUT, vm.wait()).await;
}

/// Ends every VM, all at once.
pub async fn end_all(vms: Vec<VmProcess>) {
    let mut set = tokio::task::JoinSet::new();
    for vm in vms {
        set.spawn(end(vm));
    }
    while set.join_next().await.is_some() {}
}
