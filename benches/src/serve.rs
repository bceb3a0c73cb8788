//! A `kiln serve` for the benchmarks: one template (`bench`) of the
//! benchmark guest, its own state directory, killed (SIGTERM, then
//! SIGKILL, by its pid; it drains its VMs) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln::model::{LaunchType, SandboxSpec};
use kiln::Kiln;

/// The template every benchmark daemon serves.
pub const TEMPLATE: &str = "bench";
/// How long a pool may take to fill, or a snapshot to appear.
const FILL_TIMEOUT: Duration = Duration::from_secs(600);

/// What the daemon serves.
pub struct ServeConfig<'a> {
    /// The `kiln` binary.
    pub kiln: &'a Path,
    /// Guest kernel.
    pub kernel: &'a Path,
    /// Guest initramfs.
    pub initramfs: &'a Path,
    /// Memory per VM, MiB.
    pub mem_mib: u32,
    /// `[pool] from_snapshot`: pools refill with restored clones.
    pub from_snapshot: bool,
    /// Most VMs at once (`limits.max_vms`).
    pub max_vms: u32,
}

/// A running `kiln serve`.
pub struct Serve {
    child: Child,
    socket: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
}

impl Serve {
    /// Starts a daemon whose config and state live under `dir`.
    pub fn start(c: &ServeConfig<'_>, dir: &Path) -> Result<Serve> {
        let state = dir.join("state");
        let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
        let config = format!(
            r#"state_dir = {state:?}
default_template = "{TEMPLATE}"
[templates.{TEMPLATE}]
kernel = {kernel:?}
initramfs = {initramfs:?}
mem_mib = {mem}
pool_target = 0
[pool]
from_snapshot = {from_snapshot}
[limits]
max_vms = {max_vms}
max_memory_mib = 1048576
max_parallel_boots = 4
"#,
            state = state.display().to_string(),
            kernel = abs(c.kernel)?.display().to_string(),
            initramfs = abs(c.initramfs)?.display().to_string(),
            mem = c.mem_mib,
            from_snapshot = c.from_snapshot,
            max_vms = c.max_vms,
        );
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("kiln.toml");
        std::fs::write(&path, config)?;
        let child = Command::new(abs(c.kiln)?)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("KILN_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting kiln serve")?;
        Ok(Serve {
            child,
            socket: state.join("kiln.sock"),
            state,
        })
    }

    /// A client, once the daemon listens (up to 60 s).
    pub async fn connect(&self) -> Result<Kiln> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Kiln::connect_unix(&self.socket).await {
                Ok(k) => return Ok(k),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Whether the template's snapshot is complete (the daemon marks a
    /// finished snapshot directory with a `complete` file).
    pub fn snapshot_ready(&self) -> bool {
        let root = self.state.join("snapshots").join(TEMPLATE);
        std::fs::read_dir(root)
            .map(|d| d.flatten().any(|e| e.path().join("complete").exists()))
            .unwrap_or(false)
    }

    /// Waits until the template's snapshot is complete.
    pub async fn wait_snapshot(&self) -> Result<()> {
        let deadline = Instant::now() + FILL_TIMEOUT;
        while !self.snapshot_ready() {
            if Instant::now() > deadline {
                bail!("no template snapshot within {FILL_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Pids of the VMs (kiln-vmm processes under the state dir).
    pub fn vm_pids(&self) -> Vec<u32> {
        let needle = format!("{}/", self.state.display());
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        cmd.split(|b| *b == 0)
                            .any(|a| String::from_utf8_lossy(a).starts_with(&needle))
                            && !cmd.split(|b| *b == 0).any(|a| a == b"serve")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; no memory involved.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the pool holds `n` ready VMs.
pub async fn wait_pool(kiln: &Kiln, n: u32) -> Result<()> {
    let deadline = Instant::now() + FILL_TIMEOUT;
    loop {
        let p = kiln.pool(TEMPLATE).await?;
        if p.ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool did not reach {n} ready VMs: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One create -> `echo 1` result (checked), then the sandbox is deleted;
/// returns the time and whether the create was a pool hit.
pub async fn create_echo(kiln: &Kiln) -> Result<(Duration, LaunchType)> {
    let start = Instant::now();
    let sandbox = kiln.sandboxes().create(SandboxSpec::default()).await?;
    let out = sandbox.exec(["echo", "1"]).output().await;
    let took = start.elapsed();
    let launch = sandbox.cached_info().launch_type;
    sandbox.delete().await?;
    let out = out?;
    if out.stdout != b"1\n" {
        bail!("echo gave {out:?}");
    }
    Ok((took, launch))
}
