//! The VMM's own cgroup v2: `<cgroup2 mount>/<parent>/vm-<pid>` with
//! `memory.max` (guest RAM plus the VMM's allowance), `pids.max` and an
//! optional `cpu.max`. Created by the process the caller started, removed
//! by it when the VMM is gone; stale ones (their creator died) are swept
//! when the next VM starts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::config::VmConfig;

/// Threads besides the vCPUs: main, signals, the device event loop, with
/// room to spare.
const EXTRA_PIDS: u64 = 8;
/// `cpu.max` period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// Prefix of the per-VM cgroup names.
const VM_PREFIX: &str = "vm-";

/// Why the cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup v2 hierarchy is mounted")]
    NoCgroup2,
    /// A controller kiln needs is not available in the parent.
    #[error("the {0} controller is not available (cgroup v1 host, or not delegated)")]
    Controller(&'static str),
    /// A cgroup file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: u64,
    /// `pids.max`.
    pub pids_max: u64,
    /// `cpu.max` quota in microseconds per [`CPU_PERIOD_US`], if any.
    pub cpu_quota_us: Option<u64>,
}

impl Limits {
    /// The limits `config` asks for.
    pub fn for_config(config: &VmConfig) -> Self {
        Limits {
            memory_max: config.mem_bytes() + (config.jail.vmm_memory_allowance_mib << 20),
            pids_max: u64::from(config.vcpus) + EXTRA_PIDS,
            cpu_quota_us: config
                .jail
                .cpu_quota_percent
                .map(|p| u64::from(p) * CPU_PERIOD_US / 100),
        }
    }

    /// The controllers these limits need.
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = vec!["memory", "pids"];
        if self.cpu_quota_us.is_some() {
            c.push("cpu");
        }
        c
    }

    /// (file, value) pairs to write.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![
            ("memory.max", self.memory_max.to_string()),
            ("pids.max", self.pids_max.to_string()),
        ];
        if let Some(q) = self.cpu_quota_us {
            files.push(("cpu.max", format!("{q} {CPU_PERIOD_US}")));
        }
        files
    }
}

/// Where the cgroup v2 hierarchy is mounted, from a mountinfo listing.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in mountinfo.lines() {
        // "... mount-point options - fstype source super-options"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        if let Some(point) = left.split_whitespace().nth(4) {
            let point = PathBuf::from(point.replace("\\040", " "));
            // The canonical place wins over a second mount elsewhere.
            if point == Path::new("/sys/fs/cgroup") || found.is_none() {
                found = Some(point);
            }
        }
    }
    found
}

/// This host's cgroup v2 mount.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    cgroup2_mount_in(&info).ok_or(CgroupError::NoCgroup2)
}

/// Enables `controllers` for the children of `dir` (those not yet on).
fn enable_controllers(dir: &Path, controllers: &[&'static str]) -> Result<(), CgroupError> {
    let available_path = dir.join("cgroup.controllers");
    let available = fs::read_to_string(&available_path).map_err(io_err(&available_path))?;
    let control_path = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control_path).map_err(io_err(&control_path))?;
    let mut wanted = String::new();
    for c in controllers {
        if !available.split_whitespace().any(|a| a == *c) {
            return Err(CgroupError::Controller(c));
        }
        if !enabled.split_whitespace().any(|a| a == *c) {
            wanted.push_str(&format!("+{c} "));
        }
    }
    if !wanted.is_empty() {
        fs::write(&control_path, wanted.trim_end()).map_err(io_err(&control_path))?;
    }
    Ok(())
}

/// Removes `vm-<pid>` cgroups under `parent` whose creator no longer runs
/// (killed before it could clean up). A cgroup that still holds a process
/// refuses removal and stays.
pub fn sweep_stale(parent: &Path, alive: impl Fn(u32) -> bool) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(VM_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !alive(pid) && fs::remove_dir(entry.path()).is_ok() {
            tracing::debug!("removed stale cgroup {}", entry.path().display());
        }
    }
}

/// One VM's cgroup, created and limited, its `cgroup.procs` open for the
/// move (opened by the caller's credentials, which the kernel checks).
pub struct VmCgroup {
    /// Directory of the cgroup.
    pub path: PathBuf,
    name: String,
    parent: OwnedFd,
    /// The cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`.
    dir: OwnedFd,
    procs: File,
}

impl VmCgroup {
    /// Creates `<mount>/<parent>/vm-<own pid>` with `limits`.
    pub fn create(mount: &Path, parent: &Path, limits: &Limits) -> Result<Self, CgroupError> {
        let controllers = limits.controllers();
        let mut dir = mount.to_owned();
        for part in parent.components() {
            enable_controllers(&dir, &controllers)?;
            dir.push(part);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        enable_controllers(&dir, &controllers)?;
        sweep_stale(&dir, |pid| Path::new(&format!("/proc/{pid}")).exists());
        let name = format!("{VM_PREFIX}{}", std::process::id());
        let path = dir.join(&name);
        fs::create_dir(&path).map_err(io_err(&path))?;
        let made = VmCgroup {
            parent: File::open(&dir).map_err(io_err(&dir))?.into(),
            dir: File::open(&path).map_err(io_err(&path))?.into(),
            procs: OpenOptions::new()
                .write(true)
                .open(path.join("cgroup.procs"))
                .map_err(io_err(&path))?,
            name,
            path,
        };
        for (file, value) in limits.files() {
            let p = made.path.join(file);
            fs::write(&p, &value).map_err(io_err(&p))?;
        }
        Ok(made)
    }

    /// The cgroup's directory, to fork a process straight into it.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Moves process `pid` (0: the caller) into the cgroup.
    pub fn add(&mut self, pid: i32) -> Result<(), CgroupError> {
        self.procs
            .write_all(pid.to_string().as_bytes())
            .map_err(io_err(&self.path))
    }

    /// Removes the cgroup once no process is left in it (through a
    /// descriptor of its parent opened before the jail).
    pub fn remove(&self) -> io::Result<()> {
        rustix::fs::unlinkat(
            self.parent.as_fd(),
            self.name.as_str(),
            rustix::fs::AtFlags::REMOVEDIR,
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn limits_from_config() {
        let mut c = VmConfig::new("/k");
        c.mem_mib = 256;
        c.vcpus = 2;
        let l = Limits::for_config(&c);
        assert_eq!(l.memory_max, (256 + 64) << 20);
        assert_eq!(l.pids_max, 10);
        assert_eq!(l.cpu_quota_us, None);
        assert_eq!(l.controllers(), ["memory", "pids"]);
        c.jail.cpu_quota_percent = Some(150);
        c.jail.vmm_memory_allowance_mib = 16;
        let l = Limits::for_config(&c);
        assert_eq!(l.memory_max, (256 + 16) << 20);
        assert_eq!(
            l.files(),
            vec![
                ("memory.max", ((256 + 16) << 20).to_string()),
                ("pids.max", "10".to_string()),
                ("cpu.max", "150000 100000".to_string()),
            ]
        );
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
            42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n\
            31 25 0:27 / /x\\040y rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_in("1 2 0:3 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn stale_vm_cgroups_are_swept() {
        let dir = std::env::temp_dir().join(format!("kiln-cg-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for name in ["vm-1", "vm-2", "vm-x", "other", "vm-3"] {
            fs::create_dir_all(dir.join(name)).unwrap();
        }
        // vm-3 still holds something (a cgroup with a process refuses rmdir).
        fs::write(dir.join("vm-3/busy"), b"").unwrap();
        sweep_stale(&dir, |pid| pid == 2);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["other", "vm-2", "vm-3", "vm-x"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
