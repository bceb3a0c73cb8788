//! One microVM as a process (normally `kiln-vmm`), driven through its guest
//! agent, on tokio.
//!
//! [`VmProcess::spawn`] hands kiln-vmm a serialized [`VmConfig`] in a
//! private run directory (vsock socket, log, timings). The process is always
//! ended by its pidfd (never a recycled pid): on [`VmProcess::shutdown`],
//! [`VmProcess::kill`], and on drop, which also removes the run directory.
//! A VM spawned with [`SpawnOptions::own_session`] survives its parent's
//! death and can be taken over later with [`VmProcess::adopt`].
//!
//! Snapshots: a VM spawned with [`SpawnOptions::snapshot_dir`] has a
//! control socket (`<run dir>/control.sock`) and [`VmProcess::snapshot`]
//! writes its snapshot there; [`VmProcess::restore`] starts a clone from
//! one, whose [`VmProcess::wait_ready`] reseeds the guest's RNG and sets
//! its clock before it reports ready.

pub mod disk;
mod handle;
mod identity;
pub mod memory;
mod snapshot;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kiln_agent::protocol::files::{Entry, FileDigest};
use kiln_agent::protocol::{ExecRequest, ExitStatus as GuestExit, Pong};
use kiln_vmm::config::{ControlConfig, DriveConfig, VmConfig, VsockConfig};
use kiln_vmm::vm::timings::{Timings, TimingsReport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use crate::agent_link::{
    AgentAddr, AgentError, ExecOutput, EXEC_TIMEOUT_GRACE, REQUEST_TIMEOUT, TRANSFER_IDLE_TIMEOUT,
};
pub use handle::ProcessEnd;
use handle::ProcessHandle;
pub use identity::ProcessIdentity;

/// What to boot: the `kiln-vmm` binary and the VM's config. The config's
/// `vsock` is replaced by the run directory's socket.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// The VM.
    pub config: VmConfig,
}

/// Where and how a VM process runs.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Run directory (created, must not exist); default: a fresh directory
    /// under the system's temp dir.
    pub run_dir: Option<PathBuf>,
    /// Start the process in its own session (`setsid`): signals to the
    /// parent's process group or session do not reach it, and it outlives
    /// the parent (a daemon that is SIGKILLed re-adopts it).
    pub own_session: bool,
    /// Give the VM a control socket whose snapshots go to this existing
    /// directory (see [`VmProcess::snapshot`]).
    pub snapshot_dir: Option<PathBuf>,
    /// Give the VM a writable disk of this many MiB (a sparse ext4 file
    /// in its run directory, attached read-write after the spec's drives)
    /// as the sandbox's writable layer instead of a tmpfs. The spec must
    /// have an image drive. A restored VM gets a copy of the disk its
    /// snapshot holds.
    pub writable_disk_mib: Option<u32>,
}

/// Errors from running a VM process.
#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    /// The run directory or a file in it could not be created.
    #[error("creating {path}: {source}")]
    RunDir {
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VM process could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// Binary path.
        program: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before the guest agent answered.
    #[error("the VM {ended} before its agent answered: {detail}")]
    EarlyExit {
        /// How the process ended.
        ended: ProcessEnd,
        /// Last line the VMM printed.
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    NotReady(Duration),
    /// Talking to the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Signalling or adopting the process failed.
    #[error("managing the VM process: {0}")]
    Process(#[source] std::io::Error),
    /// The VMM's control socket failed or refused the request.
    #[error("control socket: {0}")]
    Control(String),
    /// The VM's writable disk could not be made.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
}

impl VmProcessError {
    /// Whether the VMM ended because the guest crashed (as opposed to the
    /// VMM failing to start the VM, a timeout or a kill): the guest ran and
    /// no host-side input was refused.
    pub fn guest_crashed(&self) -> bool {
        matches!(self, VmProcessError::EarlyExit { ended, .. }
            if ended.status.and_then(|s| s.code()) == Some(kiln_vmm::EXIT_GUEST_CRASHED))
    }
}

/// How the VMM process ended.
#[derive(Debug, Clone)]
pub struct VmmExit {
    /// Exit status; `None` when it had to be killed, or when it was adopted
    /// (not this process's child).
    pub status: Option<std::process::ExitStatus>,
    /// Last line of the VMM's stderr, for error messages.
    pub last_log_line: String,
    /// The timings report the VMM wrote, when it exited on its own.
    pub report: Option<TimingsReport>,
}

impl VmmExit {
    /// Boot milestones from the report, when there is one.
    pub fn timings(&self) -> Option<Timings> {
        self.report.as_ref().map(TimingsReport::timings)
    }
}

fn read_report(path: &Path) -> Option<TimingsReport> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

fn last_line(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(f) = File::open(path) {
        // The log is the VMM's own (rate-limited) stderr; cap what we read.
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// File names inside a run directory.
const SOCKET_NAME: &str = "vsock.sock";
const LOG_NAME: &str = "vmm.log";
const TIMINGS_NAME: &str = "timings.json";
const CONFIG_NAME: &str = "config.json";
const CONTROL_NAME: &str = "control.sock";

fn create_run_dir(dir: Option<PathBuf>) -> Result<PathBuf, VmProcessError> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "kiln-vm-{}-{}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    });
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| VmProcessError::RunDir {
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// Makes the VM's writable disk in `dir` (a fresh file system, or for a
/// restore the copy its snapshot holds), attaches it read-write after the
/// other drives and tells the agent which device it is.
fn attach_disk(
    config: &mut VmConfig,
    dir: &Path,
    mib: u32,
    restore: Option<&Path>,
) -> Result<PathBuf, VmProcessError> {
    if config.drives.is_empty() {
        return Err(disk::DiskError::NoImage.into());
    }
    let path = dir.join(disk::DISK_NAME);
    match restore {
        Some(snapshot) => disk::copy(&snapshot.join(disk::DISK_NAME), &path)?,
        None => disk::create(&path, mib)?,
    }
    // A disk in memory is the VMM's memory as it fills: its memory limit
    // (a jail cgroup) must hold it, or the VMM is OOM-killed mid-write.
    if disk::in_memory(dir) {
        config.jail.vmm_memory_allowance_mib += u64::from(mib);
    }
    // Drives are /dev/vda, /dev/vdb, ... in order.
    let letter = char::from(b'a' + u8::try_from(config.drives.len()).unwrap_or(25).min(25));
    config.drives.push(DriveConfig {
        path: path.clone(),
        read_only: false,
    });
    config.cmdline_extra = format!("{} kiln.overlay_dev=vd{letter}", config.cmdline_extra)
        .trim()
        .to_string();
    Ok(path)
}

/// A running VM process.
pub struct VmProcess {
    process: ProcessHandle,
    agent: AgentAddr,
    dir: PathBuf,
    log: PathBuf,
    spawned_at: Instant,
    /// Restored from a snapshot: `wait_ready` sends the resume request.
    restored: bool,
    /// The writable disk, when the VM has one.
    disk: Option<PathBuf>,
    /// Where [`VmProcess::snapshot`] writes.
    snapshot_dir: Option<PathBuf>,
}

impl std::fmt::Debug for VmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmProcess")
            .field("identity", &self.process.identity())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl VmProcess {
    /// Starts `kiln-vmm --config <run dir>/config.json` for `spec`. Must run
    /// inside a tokio runtime.
    pub fn spawn(spec: &VmSpec, options: &SpawnOptions) -> Result<Self, VmProcessError> {
        Self::spawn_vmm(spec, options, None)
    }

    /// Starts a clone of the snapshot in `snapshot_dir` for `spec` (whose
    /// vCPUs, memory and devices must be the snapshot's; its drive files
    /// may differ, its vsock socket is the new run directory's). Its
    /// [`VmProcess::wait_ready`] resumes the guest as a distinct machine.
    pub fn restore(
        spec: &VmSpec,
        snapshot_dir: &Path,
        options: &SpawnOptions,
    ) -> Result<Self, VmProcessError> {
        let mut vm = Self::spawn_vmm(spec, options, Some(snapshot_dir))?;
        vm.restored = true;
        Ok(vm)
    }

    fn spawn_vmm(
        spec: &VmSpec,
        options: &SpawnOptions,
        restore: Option<&Path>,
    ) -> Result<Self, VmProcessError> {
        let dir = create_run_dir(options.run_dir.clone())?;
        let uds = dir.join(SOCKET_NAME);
        let mut config = spec.config.clone();
        config.vsock = Some(VsockConfig {
            uds_path: uds.clone(),
            guest_cid: config.vsock.map_or(3, |v| v.guest_cid),
        });
        config.control = options
            .snapshot_dir
            .as_ref()
            .map(|snapshot_dir| ControlConfig {
                socket: dir.join(CONTROL_NAME),
                snapshot_dir: snapshot_dir.clone(),
            });
        config.restore = restore.map(Path::to_path_buf);
        let disk = match options.writable_disk_mib {
            Some(mib) => match attach_disk(&mut config, &dir, mib, restore) {
                Ok(path) => Some(path),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            },
            None => None,
        };
        let config_path = dir.join(CONFIG_NAME);
        let written = serde_json::to_vec_pretty(&config)
            .map_err(std::io::Error::other)
            .and_then(|json| fs::write(&config_path, json));
        if let Err(source) = written {
            let _ = fs::remove_dir_all(&dir);
            return Err(VmProcessError::RunDir {
                path: config_path,
                source,
            });
        }
        let mut cmd = tokio::process::Command::new(&spec.vmm);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--timings-json")
            .arg(dir.join(TIMINGS_NAME));
        let mut vm =
            Self::spawn_command(cmd, AgentAddr::HybridVsock(uds), dir, options.own_session)?;
        vm.disk = disk;
        vm.snapshot_dir.clone_from(&options.snapshot_dir);
        Ok(vm)
    }

    /// Starts `cmd` as a VM process whose agent answers at `agent`, with
    /// `dir` (already created, removed with the VM) as its run directory
    /// and its stderr in `<dir>/vmm.log`. For launchers of other VM kinds
    /// (a host agent in tests).
    pub fn spawn_command(
        mut cmd: tokio::process::Command,
        agent: AgentAddr,
        dir: PathBuf,
        own_session: bool,
    ) -> Result<Self, VmProcessError> {
        let log = dir.join(LOG_NAME);
        let log_file = match File::create(&log) {
            Ok(f) => f,
            Err(source) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(VmProcessError::RunDir { path: log, source });
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(false);
        if own_session {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls setsid(2), which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
            }
        }
        let program = PathBuf::from(cmd.as_std().get_program());
        let spawned_at = Instant::now();
        let process = cmd
            .spawn()
            .and_then(ProcessHandle::from_child)
            .map_err(|source| {
                let _ = fs::remove_dir_all(&dir);
                VmProcessError::Spawn { program, source }
            })?;
        Ok(VmProcess {
            process,
            agent,
            dir,
            log,
            spawned_at,
            restored: false,
            disk: None,
            snapshot_dir: None,
        })
    }

    /// Takes over a VM process left running by an earlier owner, when
    /// `identity` (pid *and* start time) still names a live process. Its
    /// run directory is `dir`.
    pub fn adopt(
        identity: ProcessIdentity,
        agent: AgentAddr,
        dir: PathBuf,
    ) -> Result<Self, VmProcessError> {
        let process = ProcessHandle::adopt(identity).map_err(VmProcessError::Process)?;
        Ok(VmProcess {
            process,
            agent,
            log: dir.join(LOG_NAME),
            dir,
            spawned_at: Instant::now(),
            restored: false,
            disk: None,
            snapshot_dir: None,
        })
    }

    /// What the VM process (with its jailed VMM child) costs the host in
    /// memory now; `None` once it is gone.
    pub fn memory(&self) -> Option<memory::VmMemory> {
        if self.ended().is_some() {
            return None;
        }
        memory::of_process_tree(self.pid())
    }

    /// Pid and start time.
    pub fn identity(&self) -> ProcessIdentity {
        self.process.identity()
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.process.identity().pid
    }

    /// When the process was spawned (or adopted).
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// How to reach the agent.
    pub fn agent(&self) -> &AgentAddr {
        &self.agent
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The VMM's log file (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The VMM's last log line (its warnings say why a connection broke).
    pub fn last_log_line(&self) -> String {
        last_line(&self.log)
    }

    /// How the process ended, if it has.
    pub fn ended(&self) -> Option<ProcessEnd> {
        self.process.ended()
    }

    /// Waits for the process to end (without asking it to).
    pub async fn wait(&self) -> ProcessEnd {
        self.process.wait().await
    }

    /// What the VMM last said, and whether it is gone: context for an error
    /// in the middle of a request.
    pub fn vmm_report(&self) -> String {
        let state = self.ended().map_or_else(
            || "kiln-vmm still runs".to_string(),
            |e| format!("kiln-vmm {e}"),
        );
        format!("{state}; its last log line: {}", self.last_log_line())
    }

    /// Waits until the guest agent answers a ping; returns its pong. A VM
    /// restored from a snapshot is also resumed (fresh RNG seed, host
    /// time) before this returns: the resume goes out with each ping
    /// rather than after it, as the restored agent usually answers the
    /// first of each. Fails at once when the process ends first.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Pong, VmProcessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || {
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(1))
        };
        let attempts = async {
            let mut socket_seen = false;
            loop {
                if self.agent.socket_exists() {
                    if !socket_seen {
                        socket_seen = true;
                        self.step("vsock socket found");
                    }
                    if !self.restored {
                        if let Ok(pong) = self.agent.ping(left()).await {
                            self.step("agent answered a ping");
                            return Ok(pong);
                        }
                    } else {
                        let (pong, resumed) =
                            tokio::join!(self.agent.ping(left()), self.resume_guest(left()));
                        if let Ok(pong) = pong {
                            self.step("agent answered a ping");
                            if resumed.is_err() {
                                // The agent is up: a resume sent with the
                                // ping may have beaten its listener. Once
                                // more, alone, and its error is the answer.
                                self.resume_guest(left()).await?;
                            }
                            self.step("guest resumed");
                            return Ok(pong);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            pong = attempts => pong,
            ended = self.process.wait() => Err(VmProcessError::EarlyExit {
                ended,
                detail: last_line(&self.log),
            }),
            () = tokio::time::sleep_until(deadline) => Err(VmProcessError::NotReady(timeout)),
        }
    }

    /// Logs a start-up step at debug level with the time since the spawn
    /// (`kiln-vmm`'s own steps are in its log, `KILN_LOG=debug`).
    fn step(&self, what: &str) {
        tracing::debug!(
            pid = self.pid(),
            "step: {what}, {} us after the spawn",
            self.spawned_at.elapsed().as_micros()
        );
    }

    /// Pings the agent.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, VmProcessError> {
        Ok(self.agent.ping(timeout).await?)
    }

    /// Runs a program in the guest, sending its output to `output` as it
    /// arrives; `stdin` is sent when `request.stdin` is set.
    pub async fn exec(
        &self,
        request: ExecRequest,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
        output: mpsc::Sender<ExecOutput>,
    ) -> Result<GuestExit, VmProcessError> {
        Ok(self.agent.exec(request, stdin, output).await?)
    }

    /// Streams `source` into the guest file `path` (created with `mode`,
    /// parents made, replaced atomically); returns its size and SHA-256.
    pub async fn upload(
        &self,
        path: &str,
        mode: Option<u32>,
        source: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<FileDigest, VmProcessError> {
        Ok(self
            .agent
            .upload(path.to_string(), mode, Box::new(source))
            .await?)
    }

    /// Streams the guest file `path` into `sink`, checking its SHA-256.
    pub async fn download(
        &self,
        path: &str,
        sink: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Result<FileDigest, VmProcessError> {
        Ok(self
            .agent
            .download(path.to_string(), Box::new(sink))
            .await?)
    }

    /// Lists a guest directory.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<Entry>, VmProcessError> {
        Ok(self.agent.list_dir(path.to_string()).await?)
    }

    /// Sends SIGKILL (through the pidfd); the process ends shortly after.
    pub fn kill(&self) -> Result<(), VmProcessError> {
        self.process.kill().map_err(VmProcessError::Process)
    }

    /// Asks the guest to power off and waits up to `timeout` for the VMM to
    /// exit; kills it when it does not.
    pub async fn shutdown(&self, timeout: Duration) -> Result<VmmExit, VmProcessError> {
        let _ = tokio::time::timeout(timeout, self.agent.shutdown(timeout)).await;
        self.wait_or_kill(timeout).await
    }

    /// Waits up to `timeout` for the VMM to exit on its own, then kills it.
    pub async fn wait_or_kill(&self, timeout: Duration) -> Result<VmmExit, VmProcessError> {
        let status = match tokio::time::timeout(timeout, self.process.wait()).await {
            Ok(end) => end.status,
            Err(_) => {
                self.kill()?;
                self.process.wait().await;
                None
            }
        };
        Ok(VmmExit {
            status,
            last_log_line: last_line(&self.log),
            report: read_report(&self.dir.join(TIMINGS_NAME)),
        })
    }
}

/// Set (to anything) to keep each VM's run directory (VMM log, socket,
/// timings) after the VM is gone, for debugging.
pub const KEEP_RUN_DIR_ENV: &str = "KILN_KEEP_RUN_DIR";

impl Drop for VmProcess {
    fn drop(&mut self) {
        if self.process.ended().is_none() {
            let _ = self.process.kill();
        }
        if std::env::var_os(KEEP_RUN_DIR_ENV).is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests;
