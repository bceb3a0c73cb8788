//! cgroup v2 limits: one `sandbox` cgroup holding the memory and process
//! limits of all sandboxed programs together, and one child cgroup per exec
//! (`sandbox/exec-<n>`) so an exec can be killed as a whole, including
//! processes that left its process group with `setsid`.
//!
//! An exec's cgroup is made ahead: one at setup (so it is in a template's
//! snapshot and its clones), then the next one when an exec's cgroup is
//! removed after its end went out. Starting a program then only opens
//! nothing and writes its pid.
//!
//! Only used as PID 1 in the guest: the agent never touches the host's
//! cgroups.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::super::klog::{chain, klog};

/// Where the cgroup2 hierarchy is mounted.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// Name of the cgroup every sandboxed program lives under.
pub const SANDBOX_CGROUP: &str = "sandbox";
/// Controllers enabled for the sandbox and its children.
const CONTROLLERS: &str = "+memory +pids";
/// How long an exec's cleanup waits for its killed processes to go.
const EMPTY_WAIT: Duration = Duration::from_secs(2);
/// Longest cgroup interface file read (they are all tiny).
const MAX_FILE: u64 = 4096;

/// A cgroup operation failed.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// Mounting cgroup2 failed.
    #[error("cannot mount cgroup2 on {CGROUP_MOUNT}")]
    Mount(#[source] io::Error),
    /// Writing a cgroup interface file failed.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("cannot create cgroup {0}")]
    Create(PathBuf, #[source] io::Error),
    /// Opening `cgroup.procs` of a new exec cgroup failed.
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] io::Error),
}

/// The parent cgroup of all execs, with the sandbox-wide limits.
#[derive(Debug)]
pub struct SandboxCgroup {
    execs: Arc<ExecCgroups>,
}

/// Where exec cgroups are made, and the one made ahead.
#[derive(Debug)]
struct ExecCgroups {
    dir: PathBuf,
    next: AtomicU64,
    spare: Mutex<Option<Made>>,
}

/// A made exec cgroup: its directory and its open `cgroup.procs`.
#[derive(Debug)]
struct Made {
    dir: PathBuf,
    procs: File,
}

impl ExecCgroups {
    /// Makes `<sandbox>/exec-<n>`, with an OOM kill taking the whole exec.
    fn make(&self) -> Result<Made, CgroupError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = exec_dir(&self.dir, n);
        fs::create_dir(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
        // An OOM kill takes the whole exec, not one random process of it.
        // Older kernels lack the file: not fatal.
        if let Err(e) = write_file(&dir.join("memory.oom.group"), "1") {
            klog!("sandbox: {}", chain(&e));
        }
        let procs_path = dir.join("cgroup.procs");
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&procs_path)
        {
            Ok(procs) => Ok(Made { dir, procs }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(CgroupError::Open(procs_path, e))
            }
        }
    }

    /// The spare when there is one, else a new one.
    fn take(&self) -> Result<Made, CgroupError> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        match spare {
            Some(made) => Ok(made),
            None => self.make(),
        }
    }

    /// Makes the spare if there is none (a failure is logged: the next
    /// exec then makes its own and reports it).
    fn make_spare(&self) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.is_some() {
            return;
        }
        match self.make() {
            Ok(made) => *spare = Some(made),
            Err(e) => klog!("sandbox: {}", chain(&e)),
        }
    }
}

impl SandboxCgroup {
    /// Mounts cgroup2 (if needed), enables memory and pids for children
    /// and creates `sandbox` with the given limits.
    pub fn setup(memory_max: u64, pids_max: u64) -> Result<Self, CgroupError> {
        mount_cgroup2()?;
        let root = Path::new(CGROUP_MOUNT);
        write_file(&root.join("cgroup.subtree_control"), CONTROLLERS)?;
        let dir = root.join(SANDBOX_CGROUP);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::Create(dir, e)),
        }
        write_file(&dir.join("memory.max"), &memory_max.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write_file(&swap, "0")?;
        }
        write_file(&dir.join("pids.max"), &pids_max.to_string())?;
        write_file(&dir.join("cgroup.subtree_control"), CONTROLLERS)?;
        let execs = Arc::new(ExecCgroups {
            dir,
            next: AtomicU64::new(1),
            spare: Mutex::new(None),
        });
        execs.make_spare();
        Ok(Self { execs })
    }

    /// Path of the sandbox cgroup.
    pub fn dir(&self) -> &Path {
        &self.execs.dir
    }

    /// The cgroup of a new exec (the one made ahead, when there is one).
    /// The program joins it from its `pre_exec` hook through
    /// [`ExecCgroup::procs_fd`].
    pub fn new_exec(&self) -> Result<ExecCgroup, CgroupError> {
        let Made { dir, procs } = self.execs.take()?;
        Ok(ExecCgroup {
            dir,
            procs: Some(procs),
            execs: Arc::clone(&self.execs),
        })
    }
}

/// `<parent>/exec-<n>`.
fn exec_dir(parent: &Path, n: u64) -> PathBuf {
    parent.join(format!("exec-{n}"))
}

/// The cgroup of one exec; on drop everything in it is killed and the
/// cgroup removed.
#[derive(Debug)]
pub struct ExecCgroup {
    dir: PathBuf,
    procs: Option<File>,
    execs: Arc<ExecCgroups>,
}

impl ExecCgroup {
    /// An open `cgroup.procs` of this cgroup: writing `0` to it moves the
    /// writing process in (async-signal-safe, for `pre_exec`).
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// SIGKILLs every process in the cgroup (`cgroup.kill`, Linux 5.14+;
    /// older kernels: each pid in `cgroup.procs`, a few rounds).
    pub fn kill(&self) {
        if write_file(&self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..4 {
            let pids = read_small(&self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<libc::pid_t> = parse_pids(&pids);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: plain syscall; parse_pids only returns pids > 1.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Whether the kernel OOM-killed a process of this exec.
    pub fn oom_killed(&self) -> bool {
        read_small(&self.dir.join("memory.events"))
            .ok()
            .and_then(|t| event_count(&t, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    /// Waits up to [`EMPTY_WAIT`] for the cgroup to hold no process:
    /// `cgroup.events` says `populated 0`. The kernel signals each change
    /// of that file with `POLLPRI`, so this sleeps in `poll(2)`.
    pub fn wait_empty(&self) {
        let path = self.dir.join("cgroup.events");
        let Ok(mut file) = File::open(&path) else {
            return;
        };
        let deadline = Instant::now() + EMPTY_WAIT;
        loop {
            let mut text = String::new();
            let populated = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| (&file).take(MAX_FILE).read_to_string(&mut text))
                .ok()
                .and_then(|_| event_count(&text, "populated"));
            let left = deadline.saturating_duration_since(Instant::now());
            if populated == Some(0) || left.is_zero() {
                return;
            }
            if populated.is_none() {
                // Unreadable: no notification to wait for either.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let mut fds = [libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            }];
            let ms = libc::c_int::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
            // SAFETY: `fds` is a valid array of one pollfd that outlives
            // the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } < 0 {
                // EINTR, or no poll support: do not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Removes the cgroup (killing what is left) and makes the next
    /// exec's: the work an exec's end leaves, done after its end went out.
    pub fn remove_and_make_next(self) {
        let execs = Arc::clone(&self.execs);
        drop(self);
        execs.make_spare();
    }
}

impl Drop for ExecCgroup {
    fn drop(&mut self) {
        self.procs = None;
        self.kill();
        self.wait_empty();
        if let Err(e) = fs::remove_dir(&self.dir) {
            klog!("sandbox: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`,
/// `cgroup.events`): lines of `key value`.
fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_ascii_whitespace();
        if it.next()? != key {
            return None;
        }
        let value = it.next()?.parse().ok()?;
        it.next().is_none().then_some(value)
    })
}

/// Pids from `cgroup.procs`, skipping anything that is not a pid > 1.
fn parse_pids(text: &str) -> Vec<libc::pid_t> {
    text.lines()
        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        .filter(|&p| p > 1)
        .collect()
}

fn mount_cgroup2() -> Result<(), CgroupError> {
    // Already mounted (agent restarted by hand, or the kernel did it).
    if Path::new(CGROUP_MOUNT).join("cgroup.controllers").exists() {
        return Ok(());
    }
    fs::create_dir_all(CGROUP_MOUNT).map_err(CgroupError::Mount)?;
    super::mounts::mount(
        "cgroup2",
        Path::new(CGROUP_MOUNT),
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )
    .map_err(CgroupError::Mount)
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

fn read_small(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?.take(MAX_FILE).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_dirs_are_children_of_the_sandbox() {
        let parent = Path::new("/sys/fs/cgroup/sandbox");
        assert_eq!(
            exec_dir(parent, 7),
            Path::new("/sys/fs/cgroup/sandbox/exec-7")
        );
        assert_eq!(
            exec_dir(parent, u64::MAX).parent(),
            Some(parent),
            "no counter value escapes the parent"
        );
    }

    #[test]
    fn reads_event_counts() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(event_count(events, "oom_kill"), Some(2));
        assert_eq!(event_count(events, "oom"), Some(1));
        assert_eq!(event_count(events, "missing"), None);
        assert_eq!(event_count("populated 0\nfrozen 0\n", "populated"), Some(0));
    }

    #[test]
    fn hostile_event_files_read_as_unknown() {
        for bad in [
            "",
            "oom_kill",
            "oom_kill x",
            "oom_kill -1",
            "oom_kill 1 2",
            "oom_kill 99999999999999999999999",
            "oom_killed 5",
        ] {
            assert_eq!(event_count(bad, "oom_kill"), None, "{bad:?}");
        }
    }

    #[test]
    fn pid_lists_skip_junk_and_init() {
        assert_eq!(parse_pids("12\n0\n1\n-1\nx\n 34 \n"), vec![12, 34]);
        assert!(parse_pids("").is_empty());
    }

    /// An exec cgroup over a plain directory (no cgroupfs on the host).
    fn plain(dir: &Path) -> ExecCgroup {
        ExecCgroup {
            dir: dir.to_owned(),
            procs: None,
            execs: Arc::new(ExecCgroups {
                dir: dir.parent().expect("parent").to_owned(),
                next: AtomicU64::new(1),
                spare: Mutex::new(None),
            }),
        }
    }

    #[test]
    fn an_empty_cgroup_is_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("kiln-cg-empty-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let cg = plain(&dir);
        let start = Instant::now();
        cg.wait_empty();
        assert!(start.elapsed() < EMPTY_WAIT, "no events file: no wait");
        fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").expect("events");
        let start = Instant::now();
        cg.wait_empty();
        assert!(start.elapsed() < EMPTY_WAIT, "populated 0: no wait");
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").expect("events");
        let start = Instant::now();
        cg.wait_empty();
        assert!(
            start.elapsed() >= EMPTY_WAIT,
            "populated 1: waits to the bound"
        );
        std::mem::forget(cg);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_errors_name_the_file() {
        let err = write_file(Path::new("/nonexistent/kiln/memory.max"), "5").expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/kiln/memory.max"), "{msg}");
    }
}
