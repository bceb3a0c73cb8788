//! What starts a VM. [`KilnVmmLauncher`] is the production one: one
//! microVM per `kiln-vmm` process. [`HostAgentLauncher`] runs a real
//! `kiln-agent --listen-unix` process on the host instead (tests and
//! development: the same agent and protocol, no isolation at all).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::template::Template;
use crate::vm_process::{AgentAddr, SpawnOptions, VmProcess, VmProcessError, VmSpec};

/// Starts VM processes. Every VM runs in its own session, so it survives
/// the daemon and can be re-adopted.
pub trait Launcher: Send + Sync {
    /// Starts a VM for `template` with `run_dir` (not yet existing) as its
    /// run directory. Must run inside a tokio runtime.
    fn launch(&self, template: &Template, run_dir: PathBuf) -> Result<VmProcess, VmProcessError>;

    /// Whether the template's guest files must exist (a host agent needs
    /// none).
    fn needs_guest_files(&self) -> bool;

    /// The VMM binary whose VMs can be snapshotted and restored (part of
    /// what a snapshot is valid for), or `None` when they cannot.
    fn snapshot_vmm(&self) -> Option<&Path> {
        None
    }

    /// Starts a VM like [`Launcher::launch`] whose snapshot
    /// ([`VmProcess::snapshot`]) goes to `snapshot_dir`.
    fn launch_for_snapshot(
        &self,
        _template: &Template,
        _run_dir: PathBuf,
        _snapshot_dir: &Path,
    ) -> Result<VmProcess, VmProcessError> {
        Err(no_snapshots())
    }

    /// Starts a clone of the snapshot in `snapshot_dir`, taken of a VM of
    /// the same `template`.
    fn restore(
        &self,
        _template: &Template,
        _run_dir: PathBuf,
        _snapshot_dir: &Path,
    ) -> Result<VmProcess, VmProcessError> {
        Err(no_snapshots())
    }
}

fn no_snapshots() -> VmProcessError {
    VmProcessError::Control("this launcher cannot snapshot or restore VMs".into())
}

/// `kiln-vmm` with the template's serialized `VmConfig`.
#[derive(Debug, Clone)]
pub struct KilnVmmLauncher {
    /// The `kiln-vmm` binary.
    pub vmm: PathBuf,
}

impl KilnVmmLauncher {
    fn spec(&self, template: &Template) -> VmSpec {
        VmSpec {
            vmm: self.vmm.clone(),
            config: template.vm_config(),
        }
    }
}

/// A daemon's VM: its own run directory and session.
fn daemon_options(
    template: &Template,
    run_dir: PathBuf,
    snapshot_dir: Option<&Path>,
) -> SpawnOptions {
    SpawnOptions {
        run_dir: Some(run_dir),
        own_session: true,
        snapshot_dir: snapshot_dir.map(Path::to_path_buf),
        writable_disk_mib: template.disk_mib,
    }
}

impl Launcher for KilnVmmLauncher {
    fn launch(&self, template: &Template, run_dir: PathBuf) -> Result<VmProcess, VmProcessError> {
        VmProcess::spawn(
            &self.spec(template),
            &daemon_options(template, run_dir, None),
        )
    }

    fn needs_guest_files(&self) -> bool {
        true
    }

    fn snapshot_vmm(&self) -> Option<&Path> {
        Some(&self.vmm)
    }

    fn launch_for_snapshot(
        &self,
        template: &Template,
        run_dir: PathBuf,
        snapshot_dir: &Path,
    ) -> Result<VmProcess, VmProcessError> {
        VmProcess::spawn(
            &self.spec(template),
            &daemon_options(template, run_dir, Some(snapshot_dir)),
        )
    }

    fn restore(
        &self,
        template: &Template,
        run_dir: PathBuf,
        snapshot_dir: &Path,
    ) -> Result<VmProcess, VmProcessError> {
        VmProcess::restore(
            &self.spec(template),
            snapshot_dir,
            &daemon_options(template, run_dir, None),
        )
    }
}

/// `kiln-agent --listen-unix <run dir>/agent.sock --files-root <run dir>/root`,
/// started in `<run dir>/root/home/sandbox` (where relative paths start).
#[derive(Debug, Clone)]
pub struct HostAgentLauncher {
    /// The `kiln-agent` binary.
    pub agent: PathBuf,
}

fn mkdir_private(path: &Path) -> Result<(), VmProcessError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| VmProcessError::RunDir {
            path: path.to_path_buf(),
            source,
        })
}

impl Launcher for HostAgentLauncher {
    fn launch(&self, _template: &Template, run_dir: PathBuf) -> Result<VmProcess, VmProcessError> {
        mkdir_private(&run_dir)?;
        let root = run_dir.join("root");
        // Programs start where relative file paths start: the home.
        let home = root.join("home/sandbox");
        if let Err(source) = std::fs::create_dir_all(&home) {
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(VmProcessError::RunDir { path: home, source });
        }
        let socket = run_dir.join("agent.sock");
        let mut cmd = tokio::process::Command::new(&self.agent);
        cmd.arg("--listen-unix")
            .arg(&socket)
            .arg("--files-root")
            .arg(&root)
            .current_dir(&home);
        VmProcess::spawn_command(cmd, AgentAddr::Unix(socket), run_dir, true)
    }

    fn needs_guest_files(&self) -> bool {
        false
    }
}
