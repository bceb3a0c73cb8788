//! One microVM as a `kiln-vmm` child process, driven through its guest agent.
//!
//! The process is always ended by its own pid: on [`VmProcess::shutdown`], on
//! error, and on drop. Its run directory (vsock socket, logs) is removed with
//! it.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kiln_agent::client::files::{self, Downloaded, FilesError, Written};
use kiln_agent::client::{self, ClientError};
use kiln_agent::protocol::{ExecRequest, ExitStatus as GuestExit, Pong, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock::{self, VsockConnectError};

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Write the guest's serial console here (slower boots: every byte exits).
    pub serial_log: Option<PathBuf>,
    /// Extra guest kernel command-line arguments (e.g. `loglevel=7`).
    pub kernel_args: Option<String>,
    /// Read-only disks (virtio-blk), in order: /dev/vda, /dev/vdb, ...
    pub drives: Vec<PathBuf>,
}

/// Errors from running a VM process.
#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    /// The run directory could not be created.
    #[error("creating run directory {path}: {source}")]
    RunDir {
        /// Directory path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `kiln-vmm` could not be started.
    #[error("starting {vmm}: {source}")]
    Spawn {
        /// Binary path.
        vmm: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before the guest agent answered.
    #[error("the VM exited before its agent answered ({status}): {detail}")]
    EarlyExit {
        /// VMM exit status.
        status: ExitStatus,
        /// Last line the VMM printed.
        detail: String,
    },
    /// The agent did not answer in time.
    #[error("the guest agent did not answer within {0:?}")]
    NotReady(Duration),
    /// Connecting to the agent failed.
    #[error("connecting to the guest agent: {0}")]
    Connect(#[from] VsockConnectError),
    /// The agent protocol failed.
    #[error("guest agent: {0}")]
    Agent(#[from] ClientError),
    /// The guest stopped answering mid-request: no frame arrived (or none
    /// could be sent) for this long.
    #[error("the guest stopped answering: no progress for {0:?}")]
    Unresponsive(Duration),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Files {
        /// Operation.
        op: &'static str,
        /// Guest path.
        path: String,
        /// Underlying error (boxed: it is large and rare).
        #[source]
        source: Box<FilesError>,
    },
    /// Waiting for or killing the VMM failed.
    #[error("managing the VMM process: {0}")]
    Process(#[source] std::io::Error),
}

/// How the VMM process ended.
#[derive(Debug, Clone)]
pub struct VmmExit {
    /// Exit status, `None` when it had to be killed.
    pub status: Option<ExitStatus>,
    /// Last line of the VMM's stderr, for error messages.
    pub last_log_line: String,
    /// Boot milestones the VMM recorded, when it exited on its own.
    pub timings: Option<VmmTimings>,
}

/// Boot milestones from `kiln-vmm --timings-json`, each measured from the
/// VMM process's start.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmmTimings {
    /// First entry into the guest kernel.
    pub kernel_entry: Option<Duration>,
    /// Guest userspace start (the agent's boot-timer write).
    pub userspace_start: Option<Duration>,
}

impl VmmTimings {
    /// Kernel boot: first guest entry to userspace start.
    pub fn kernel_boot(&self) -> Option<Duration> {
        Some(self.userspace_start?.saturating_sub(self.kernel_entry?))
    }
}

fn read_timings(path: &Path) -> Option<VmmTimings> {
    let text = fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let us = |k: &str| json[k].as_u64().map(Duration::from_micros);
    Some(VmmTimings {
        kernel_entry: us("kernel_entry_us"),
        userspace_start: us("userspace_start_us"),
    })
}

/// Timeout for the vsock handshake on one connection attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `kiln-vmm` process.
pub struct VmProcess {
    child: Option<Child>,
    dir: PathBuf,
    uds: PathBuf,
    log: PathBuf,
    timings: PathBuf,
    spawned_at: Instant,
}

/// How long a file transfer may make no progress before the guest counts as
/// unresponsive (generous: the nested testbed has stalled single transfers
/// for over a minute).
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long past an exec's own timeout the host waits for its result: the
/// agent kills the program at the timeout and answers at once, so silence
/// beyond this means the guest itself is stuck.
pub const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(30);

/// Whether `e` (or any error it wraps) is a socket timeout.
fn is_socket_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn last_line(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        // The log is the VMM's own (rate-limited) stderr; cap what we read.
        let _ = f.by_ref().take(1 << 20).read_to_string(&mut text);
    }
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// A failed files call, or an unresponsive guest when the socket timed out.
fn files_error(op: &'static str, path: &str, source: FilesError) -> VmProcessError {
    if is_socket_timeout(&source) {
        return VmProcessError::Unresponsive(TRANSFER_IDLE_TIMEOUT);
    }
    VmProcessError::Files {
        op,
        path: path.to_string(),
        source: Box::new(source),
    }
}

impl VmProcess {
    /// Starts `kiln-vmm` for `spec` in a fresh private run directory.
    pub fn spawn(spec: &VmSpec) -> Result<Self, VmProcessError> {
        let dir = std::env::temp_dir().join(format!(
            "kiln-vm-{}-{}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| VmProcessError::RunDir {
                path: dir.clone(),
                source,
            })?;
        let uds = dir.join("vsock.sock");
        let log = dir.join("vmm.log");
        let timings = dir.join("timings.json");
        let log_file = File::create(&log).map_err(|source| VmProcessError::RunDir {
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&spec.vmm);
        cmd.arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initramfs")
            .arg(&spec.initramfs)
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--mem-mib")
            .arg(spec.mem_mib.to_string())
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--timings-json")
            .arg(&timings);
        if let Some(serial) = &spec.serial_log {
            cmd.arg("--serial-log").arg(serial);
        }
        for drive in &spec.drives {
            cmd.arg("--drive").arg(drive);
        }
        if let Some(extra) = &spec.kernel_args {
            cmd.arg("--cmdline-extra").arg(extra);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let spawned_at = Instant::now();
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(VmProcessError::Spawn {
                    vmm: spec.vmm.clone(),
                    source,
                });
            }
        };
        Ok(VmProcess {
            child: Some(child),
            dir,
            uds,
            log,
            timings,
            spawned_at,
        })
    }

    /// The VMM's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// When the process was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The VM's hybrid-vsock socket.
    pub fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    /// The VMM's log file (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The VMM's last log line (its warnings say why a connection broke).
    pub fn last_log_line(&self) -> String {
        last_line(&self.log)
    }

    /// How the VMM process ended, when it has: "exited with status N" or
    /// "killed by signal N". The child stays unreaped, so this only needs
    /// `&self` and later waits still see the status.
    pub fn vmm_ended(&self) -> Option<String> {
        let pid = libc::id_t::try_from(self.child.as_ref()?.id()).ok()?;
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid only writes into `info`, which outlives the call;
        // WNOWAIT leaves the child waitable and WNOHANG never blocks.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid succeeded, so si_pid and si_status are initialized
        // (si_pid is 0 while the child still runs).
        let (ended_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if rc != 0 || ended_pid == 0 {
            return None;
        }
        Some(if info.si_code == libc::CLD_EXITED {
            format!("exited with status {status}")
        } else {
            format!("killed by signal {status}")
        })
    }

    /// What the VMM last said, and whether it is gone: context for an error
    /// in the middle of a request.
    pub fn vmm_report(&self) -> String {
        let state = self.vmm_ended().map_or_else(
            || "kiln-vmm still runs".to_string(),
            |e| format!("kiln-vmm {e}"),
        );
        format!("{state}; its last log line: {}", self.last_log_line())
    }

    fn check_alive(&mut self) -> Result<(), VmProcessError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait().map_err(VmProcessError::Process)? {
            self.child = None;
            return Err(VmProcessError::EarlyExit {
                status,
                detail: last_line(&self.log),
            });
        }
        Ok(())
    }

    /// Waits until the guest agent answers a ping; returns its pong.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Pong, VmProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(VmProcessError::NotReady(timeout));
            }
            if self.uds.exists() {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(mut stream) =
                    hybrid_vsock::connect(&self.uds, AGENT_VSOCK_PORT, left.min(HANDSHAKE_TIMEOUT))
                {
                    let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    if let Ok(pong) = client::ping(&mut stream) {
                        return Ok(pong);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A connection for a file transfer: a transfer that makes no progress
    /// for [`TRANSFER_IDLE_TIMEOUT`] fails instead of hanging.
    fn transfer_stream(&self) -> Result<UnixStream, VmProcessError> {
        let stream = self.connect()?;
        stream
            .set_read_timeout(Some(TRANSFER_IDLE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TRANSFER_IDLE_TIMEOUT)))
            .map_err(VmProcessError::Process)?;
        Ok(stream)
    }

    /// Opens a connection to the guest agent.
    pub fn connect(&self) -> Result<UnixStream, VmProcessError> {
        Ok(hybrid_vsock::connect(
            &self.uds,
            AGENT_VSOCK_PORT,
            HANDSHAKE_TIMEOUT,
        )?)
    }

    /// Runs a program in the guest, streaming its output to the callbacks.
    pub fn exec<I: Read + Send>(
        &self,
        request: &ExecRequest,
        stdin: I,
        on_stdout: impl FnMut(&[u8]),
        on_stderr: impl FnMut(&[u8]),
    ) -> Result<GuestExit, VmProcessError> {
        let mut reader = self.connect()?;
        // Only a bounded exec can bound the wait: a program without a
        // timeout may stay silent for as long as it likes.
        let guard = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + EXEC_TIMEOUT_GRACE);
        reader
            .set_read_timeout(guard)
            .and_then(|()| reader.set_write_timeout(guard))
            .map_err(VmProcessError::Process)?;
        let writer = reader.try_clone().map_err(VmProcessError::Process)?;
        client::exec_duplex(&mut reader, writer, request, stdin, on_stdout, on_stderr).map_err(
            |e| match guard {
                Some(d) if is_socket_timeout(&e) => VmProcessError::Unresponsive(d),
                _ => VmProcessError::Agent(e),
            },
        )
    }

    /// Streams `source` into the guest file `path` (created with `mode`,
    /// parents made, replaced atomically); returns its size and SHA-256.
    pub fn upload<R: Read>(
        &self,
        path: &str,
        mode: Option<u32>,
        source: R,
    ) -> Result<Written, VmProcessError> {
        let mut stream = self.transfer_stream()?;
        files::upload(&mut stream, path, mode, source)
            .map_err(|source| files_error("upload to", path, source))
    }

    /// Streams the guest file `path` into `sink`, checking its SHA-256.
    pub fn download<W: std::io::Write>(
        &self,
        path: &str,
        sink: W,
    ) -> Result<Downloaded, VmProcessError> {
        let mut stream = self.transfer_stream()?;
        files::download(&mut stream, path, sink)
            .map_err(|source| files_error("download of", path, source))
    }

    /// Asks the guest to power off and waits up to `timeout` for the VMM to
    /// exit; kills it by pid when it does not.
    pub fn shutdown(mut self, timeout: Duration) -> Result<VmmExit, VmProcessError> {
        if let Ok(mut stream) = self.connect() {
            let _ = stream.set_read_timeout(Some(timeout));
            let _ = client::shutdown(&mut stream);
        }
        self.wait_or_kill(timeout)
    }

    /// Waits up to `timeout` for the VMM to exit on its own, then kills it.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> Result<VmmExit, VmProcessError> {
        let deadline = Instant::now() + timeout;
        let status = match self.child.as_mut() {
            None => None,
            Some(child) => loop {
                if let Some(status) = child.try_wait().map_err(VmProcessError::Process)? {
                    break Some(status);
                }
                if Instant::now() >= deadline {
                    child.kill().map_err(VmProcessError::Process)?;
                    child.wait().map_err(VmProcessError::Process)?;
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            },
        };
        self.child = None;
        Ok(VmmExit {
            status,
            last_log_line: last_line(&self.log),
            timings: read_timings(&self.timings),
        })
    }
}

/// Set (to anything) to keep each VM's run directory (VMM log, socket,
/// timings) after the VM is gone, for debugging.
pub const KEEP_RUN_DIR_ENV: &str = "KILN_KEEP_RUN_DIR";

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os(KEEP_RUN_DIR_ENV).is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use kiln_agent::client::ClientError;
    use kiln_agent::protocol::{FrameError, ProtocolError};

    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::{is_socket_timeout, VmProcess, VmSpec};

    #[test]
    fn socket_timeouts_are_found_through_the_error_chain() {
        let wrapped = |kind| {
            ClientError::Protocol(ProtocolError::Frame(FrameError::Io(io::Error::from(kind))))
        };
        assert!(is_socket_timeout(&wrapped(io::ErrorKind::WouldBlock)));
        assert!(is_socket_timeout(&wrapped(io::ErrorKind::TimedOut)));
        assert!(!is_socket_timeout(&wrapped(io::ErrorKind::BrokenPipe)));
        assert!(!is_socket_timeout(&ClientError::Closed));
    }

    /// A stand-in "VMM" that exits at once (sh refuses kiln-vmm's flags).
    fn spec_running(vmm: &str) -> VmSpec {
        VmSpec {
            vmm: PathBuf::from(vmm),
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            initramfs: PathBuf::from("/nonexistent/initramfs"),
            vcpus: 1,
            mem_mib: 64,
            serial_log: None,
            kernel_args: None,
            drives: Vec::new(),
        }
    }

    #[test]
    fn a_vmm_that_ended_is_reported_and_still_waitable() {
        let mut vm = VmProcess::spawn(&spec_running("/bin/sh")).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let ended = loop {
            if let Some(e) = vm.vmm_ended() {
                break e;
            }
            assert!(Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(ended, "exited with status 2");
        assert!(vm
            .vmm_report()
            .starts_with("kiln-vmm exited with status 2; its last log line: "));
        // Not reaped: the real wait still gets the status.
        let exit = vm.wait_or_kill(Duration::from_secs(5)).expect("wait");
        assert_eq!(exit.status.and_then(|s| s.code()), Some(2));
    }
}
