//! Firecracker's snapshot restore, the peer of kiln's: a Firecracker VM
//! boots the benchmark guest (config file plus API socket), is paused and
//! snapshotted over its API once its agent answers; each restore is a new
//! Firecracker process loading that snapshot (`PUT /snapshot/load`,
//! resumed, its vsock socket overridden), timed from spawn until the
//! agent has answered a ping and the same `Resume` request (fresh RNG
//! seed, host time) kiln's clones get. Firecracker resets vsock
//! connections at restore; the agent's listener survives that.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_agent::client;
use kiln_agent::protocol::{Resume, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock;
use serde_json::json;

use super::fc_api::{self, ApiError};
use super::firecracker::Firecracker;
use super::{hybrid_ping, wait_for_pong, BootError, BOOT_TIMEOUT};
use crate::child::ChildGuard;

const WHAT: &str = "firecracker restore";
/// Longest one API call may take (a full snapshot writes guest memory).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// Seed bytes sent with the resume, as kiln sends.
const SEED_BYTES: usize = 64;

/// A Firecracker snapshot on disk (state file + memory file).
pub struct FcSnapshot {
    binary: PathBuf,
    scratch: PathBuf,
    state: PathBuf,
    memory: PathBuf,
}

fn api_err(e: ApiError) -> BootError {
    BootError::Guest {
        what: WHAT,
        detail: e.to_string(),
    }
}

fn spawn(
    binary: &Path,
    api: &Path,
    id: &str,
    config: Option<&Path>,
) -> Result<ChildGuard, BootError> {
    let _ = std::fs::remove_file(api);
    // Seccomp off, as for the boot peer (a glibc build has no filter).
    let mut cmd = Command::new(binary);
    cmd.args(["--no-seccomp", "--level", "Error", "--id", id])
        .arg("--api-sock")
        .arg(api);
    if let Some(config) = config {
        cmd.arg("--config-file").arg(config);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| BootError::Spawn { what: WHAT, source })?;
    Ok(ChildGuard::new(child))
}

/// The resume request kiln's clones get: fresh random bytes and the time.
fn fresh_resume() -> Result<Resume, BootError> {
    let mut seed = vec![0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|source| BootError::Spawn { what: WHAT, source })?;
    let unix_time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Ok(Resume { seed, unix_time_ns })
}

impl FcSnapshot {
    /// Boots `fc`'s guest, waits for its agent, pauses and snapshots it
    /// into `scratch`, then ends that Firecracker.
    pub fn make(fc: &Firecracker, scratch: &Path) -> Result<FcSnapshot, BootError> {
        let io = |source| BootError::Spawn { what: WHAT, source };
        std::fs::create_dir_all(scratch).map_err(io)?;
        let (api, uds, config) = (
            scratch.join("template.api"),
            scratch.join("template.vsock"),
            scratch.join("template.json"),
        );
        let _ = std::fs::remove_file(&uds);
        std::fs::write(&config, fc.config(&uds).to_string()).map_err(io)?;
        let snapshot = FcSnapshot {
            binary: fc.binary.clone(),
            scratch: scratch.to_path_buf(),
            state: scratch.join("fc.state"),
            memory: scratch.join("fc.memory"),
        };
        let mut guard = spawn(&fc.binary, &api, "template", Some(&config))?;
        wait_for_pong(WHAT, &mut guard, Instant::now() + BOOT_TIMEOUT, || {
            hybrid_ping(&uds)
        })?;
        let started = Instant::now();
        fc_api::call(
            &api,
            "PATCH",
            "/vm",
            &json!({"state": "Paused"}),
            API_TIMEOUT,
        )
        .map_err(api_err)?;
        fc_api::call(
            &api,
            "PUT",
            "/snapshot/create",
            &json!({
                "snapshot_type": "Full",
                "snapshot_path": snapshot.state,
                "mem_file_path": snapshot.memory,
            }),
            API_TIMEOUT,
        )
        .map_err(api_err)?;
        eprintln!("firecracker snapshot: {:?}", started.elapsed());
        drop(guard);
        for f in [&api, &uds, &config] {
            let _ = std::fs::remove_file(f);
        }
        Ok(snapshot)
    }

    /// Restores once (run `i`): spawn -> agent pong -> resume answered.
    pub fn restore_once(&self, i: usize) -> Result<Duration, BootError> {
        self.restore_held(i).map(|(clone, took)| {
            drop(clone);
            took
        })
    }

    /// Restores clone `i` and keeps it running until the returned
    /// [`FcClone`] is dropped (fan-out holds a round's clones at once).
    pub fn restore_held(&self, i: usize) -> Result<(FcClone, Duration), BootError> {
        let api = self.scratch.join(format!("r{i}.api"));
        let uds = self.scratch.join(format!("r{i}.vsock"));
        let _ = std::fs::remove_file(&uds);
        let start = Instant::now();
        let mut clone = FcClone {
            guard: spawn(&self.binary, &api, &format!("restore-{i}"), None)?,
            api,
            uds,
        };
        let took = self.load_and_resume(&mut clone.guard, &clone.api, &clone.uds, start)?;
        Ok((clone, took))
    }

    fn load_and_resume(
        &self,
        guard: &mut ChildGuard,
        api: &Path,
        uds: &Path,
        start: Instant,
    ) -> Result<Duration, BootError> {
        fc_api::wait_for_socket(api, BOOT_TIMEOUT).map_err(api_err)?;
        fc_api::call(
            api,
            "PUT",
            "/snapshot/load",
            &json!({
                "snapshot_path": self.state,
                "mem_backend": {"backend_type": "File", "backend_path": self.memory},
                "resume_vm": true,
                "vsock_override": {"uds_path": uds},
            }),
            API_TIMEOUT,
        )
        .map_err(api_err)?;
        wait_for_pong(WHAT, guard, start + BOOT_TIMEOUT, || hybrid_ping(uds))?;
        let resume = fresh_resume()?;
        let mut stream = hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, Duration::from_secs(10))
            .map_err(|e| BootError::Guest {
                what: WHAT,
                detail: format!("connecting for the resume: {e}"),
            })?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        client::resume(&mut stream, &resume).map_err(|e| BootError::Guest {
            what: WHAT,
            detail: format!("resume: {e}"),
        })?;
        Ok(start.elapsed())
    }
}

/// A restored Firecracker clone: killed (by its own pid) and its sockets
/// removed when dropped.
pub struct FcClone {
    guard: ChildGuard,
    api: PathBuf,
    uds: PathBuf,
}

impl FcClone {
    /// The Firecracker process's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

impl Drop for FcClone {
    fn drop(&mut self) {
        // The guard's own drop kills and reaps; the sockets go after it.
        let _ = self.guard.wait_or_kill(Duration::ZERO);
        let _ = std::fs::remove_file(&self.api);
        let _ = std::fs::remove_file(&self.uds);
    }
}

impl Drop for FcSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
