//! Firecracker's snapshot restore, the peer of kiln's: a Firecracker VM
//! boots the benchmark guest (config file plus API socket), is paused and
//! snapshotted over its API once its agent answers; each restore is a new
//! Firecracker process loading that snapshot (`PUT /snapshot/load`,
//! resumed, its vsock socket overridden), timed from spawn until the
//! agent has answered a ping and the same `Resume` request (fresh RNG
//! seed, host time) kiln's clones get. Firecracker resets vsock
//! connections at restore; the agent's listener survives that.
//!
//! With a jailer ([`FcSnapshot::with_jailer`]) each restore runs as
//! Firecracker recommends for production, like kiln-vmm's own jail: its
//! `jailer` builds a chroot holding the snapshot (hard links), its own
//! cgroup (memory and pid limits), drops to an unprivileged uid and execs
//! Firecracker there; the timing then starts before the chroot is made.

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
    jailer: Option<Jailer>,
}

/// How restores go through Firecracker's jailer.
struct Jailer {
    binary: PathBuf,
    /// Firecracker's absolute path (`--exec-file`).
    exec: PathBuf,
    /// `--chroot-base-dir`: every restore's chroot is below it.
    base: PathBuf,
    uid: u32,
    gid: u32,
    /// `memory.max` of each restore's cgroup, bytes.
    memory_max: u64,
}

/// The uid and gid jailed Firecracker restores run as.
const JAIL_ID: u32 = 10_123;
/// Memory a jailed Firecracker may use beyond its guest's RAM.
const JAIL_MEMORY_ALLOWANCE: u64 = 64 << 20;
/// Processes and threads a jailed Firecracker may have.
const JAIL_PIDS_MAX: u32 = 64;
/// Where cgroup v2 is mounted (as `tools/testbed` and kiln's jail expect).
const CGROUP2: &str = "/sys/fs/cgroup";

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
            jailer: None,
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

    /// From now on restores go through `jailer` (Firecracker's own), for
    /// a guest of `mem_mib`: the snapshot files are handed to the jail's
    /// unprivileged uid.
    pub fn with_jailer(mut self, jailer: &Path, mem_mib: u32) -> Result<Self, BootError> {
        for file in [&self.state, &self.memory] {
            std::os::unix::fs::chown(file, Some(JAIL_ID), Some(JAIL_ID))
                .map_err(|source| BootError::Spawn { what: WHAT, source })?;
        }
        let exec = self
            .binary
            .canonicalize()
            .map_err(|source| BootError::Spawn { what: WHAT, source })?;
        self.jailer = Some(Jailer {
            binary: jailer.to_path_buf(),
            exec,
            base: self.scratch.join("jail"),
            uid: JAIL_ID,
            gid: JAIL_ID,
            memory_max: (u64::from(mem_mib) << 20) + JAIL_MEMORY_ALLOWANCE,
        });
        Ok(self)
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
        if let Some(jailer) = &self.jailer {
            return self.restore_jailed(jailer, i);
        }
        let api = self.scratch.join(format!("r{i}.api"));
        let uds = self.scratch.join(format!("r{i}.vsock"));
        let _ = std::fs::remove_file(&uds);
        let start = Instant::now();
        let mut clone = FcClone {
            guard: spawn(&self.binary, &api, &format!("restore-{i}"), None)?,
            api,
            uds,
            jail: None,
        };
        let files = (
            self.state.as_path(),
            self.memory.as_path(),
            clone.uds.as_path(),
        );
        let took = self.load_and_resume(&mut clone.guard, &clone.api, files, &clone.uds, start)?;
        Ok((clone, took))
    }

    /// A restore through the jailer: chroot `<base>/<binary name>/<id>/root`
    /// with the snapshot hard-linked in, the API and vsock sockets inside.
    fn restore_jailed(&self, jailer: &Jailer, i: usize) -> Result<(FcClone, Duration), BootError> {
        let io = |source| BootError::Spawn { what: WHAT, source };
        let id = format!("restore-{i}");
        let name = jailer.exec.file_name().ok_or_else(|| BootError::Guest {
            what: WHAT,
            detail: "the firecracker path has no file name".into(),
        })?;
        let jail_dir = jailer.base.join(name).join(&id);
        let root = jail_dir.join("root");
        let _ = std::fs::remove_dir_all(&jail_dir);
        let start = Instant::now();
        std::fs::create_dir_all(&root).map_err(io)?;
        std::fs::hard_link(&self.state, root.join("fc.state")).map_err(io)?;
        std::fs::hard_link(&self.memory, root.join("fc.memory")).map_err(io)?;
        let child = Command::new(&jailer.binary)
            .arg("--id")
            .arg(&id)
            .arg("--exec-file")
            .arg(&jailer.exec)
            .args(["--uid", &jailer.uid.to_string()])
            .args(["--gid", &jailer.gid.to_string()])
            .arg("--chroot-base-dir")
            .arg(&jailer.base)
            .args(["--cgroup-version", "2"])
            .args(["--cgroup", &format!("memory.max={}", jailer.memory_max)])
            .args(["--cgroup", &format!("pids.max={JAIL_PIDS_MAX}")])
            // After `--`: Firecracker's own arguments, paths in the chroot.
            .args([
                "--",
                "--no-seccomp",
                "--level",
                "Error",
                "--api-sock",
                "/api.sock",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io)?;
        let mut clone = FcClone {
            // The jailer execs Firecracker in place: this pid is the VMM's.
            guard: ChildGuard::new(child),
            api: root.join("api.sock"),
            uds: root.join("v.sock"),
            jail: Some(JailLeftovers {
                dir: jail_dir,
                cgroup: Path::new(CGROUP2).join(name).join(&id),
            }),
        };
        let files = (
            Path::new("/fc.state"),
            Path::new("/fc.memory"),
            Path::new("/v.sock"),
        );
        let took = self.load_and_resume(&mut clone.guard, &clone.api, files, &clone.uds, start)?;
        Ok((clone, took))
    }

    /// Loads the snapshot (`files`: state, memory and the vsock socket as
    /// Firecracker sees them), waits for the agent behind `uds` and
    /// resumes it.
    fn load_and_resume(
        &self,
        guard: &mut ChildGuard,
        api: &Path,
        files: (&Path, &Path, &Path),
        uds: &Path,
        start: Instant,
    ) -> Result<Duration, BootError> {
        let (state, memory, vsock) = files;
        fc_api::wait_for_socket(api, BOOT_TIMEOUT).map_err(api_err)?;
        fc_api::call(
            api,
            "PUT",
            "/snapshot/load",
            &json!({
                "snapshot_path": state,
                "mem_backend": {"backend_type": "File", "backend_path": memory},
                "resume_vm": true,
                "vsock_override": {"uds_path": vsock},
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
/// removed when dropped; a jailed one's chroot and cgroup too.
pub struct FcClone {
    guard: ChildGuard,
    api: PathBuf,
    uds: PathBuf,
    jail: Option<JailLeftovers>,
}

/// What the jailer leaves behind for one restore.
struct JailLeftovers {
    /// `<base>/<binary name>/<id>`: the chroot and its pid file.
    dir: PathBuf,
    /// The restore's cgroup (empty once Firecracker is reaped).
    cgroup: PathBuf,
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
        if let Some(jail) = &self.jail {
            let _ = std::fs::remove_dir_all(&jail.dir);
            let _ = std::fs::remove_dir(&jail.cgroup);
        }
    }
}

impl Drop for FcSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
        // The jailer's parent cgroup, named after the binary (empty once
        // every clone's own cgroup is gone).
        if let Some(name) = self.jailer.as_ref().and_then(|j| j.exec.file_name()) {
            let _ = std::fs::remove_dir(Path::new(CGROUP2).join(name));
        }
    }
}
