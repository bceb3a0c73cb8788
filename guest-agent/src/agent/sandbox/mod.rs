//! Where and as whom programs run, and their limits.
//!
//! As PID 1 in the guest the agent builds the sandbox once at boot:
//! - root: the runtime image on `/dev/vda` (read-only erofs or ext4) under
//!   a tmpfs overlay at `/run/kiln/root` (see `mounts`), or the initramfs
//!   root `/` when no image is attached or mounting it fails;
//! - user: uid/gid 1000, home `/home/sandbox` (created if missing);
//! - limits: cgroup v2 `sandbox` (memory, pids) with one child per exec
//!   (see `cgroup`).
//!
//! The agent itself stays root in the initramfs root; each program enters
//! the sandbox between fork and exec (see `enter`). Setup failures are
//! logged and described in `Pong::sandbox`, never fatal.
//!
//! On the host (`--listen-unix`) nothing is confined unless
//! `--sandbox-root DIR` is given, which chroots programs into `DIR` as the
//! sandbox user without cgroups: the host's cgroups and mounts are never
//! touched.

mod cgroup;
mod enter;
mod meminfo;
mod mounts;

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::config::Config;
use super::klog::{chain, klog};
pub use cgroup::ExecCgroup;
use cgroup::SandboxCgroup;
pub use enter::{Entry, SANDBOX_HOME, SANDBOX_PATH, SANDBOX_UID};

/// Longest `/proc/cmdline` or `/proc/meminfo` read.
const MAX_PROC_FILE: u64 = 64 * 1024;

/// Preparing one exec's confinement failed.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The exec's cgroup could not be created; the program is not started
    /// outside its limits.
    #[error("cannot create the exec's cgroup")]
    Cgroup(#[from] cgroup::CgroupError),
    /// A path for the child contains NUL.
    #[error(transparent)]
    Nul(#[from] enter::NulError),
}

/// The sandbox every exec enters.
#[derive(Debug)]
pub struct Sandbox {
    /// `None`: programs run unconfined, as the agent (host testing).
    root: Option<PathBuf>,
    cgroup: Option<SandboxCgroup>,
    description: String,
}

/// One exec's confinement: the child's entry steps and its cgroup (killed
/// and removed when this is dropped).
#[derive(Debug, Default)]
pub struct ExecSandbox {
    /// Steps for `pre_exec`; `None` when unconfined.
    pub entry: Option<Entry>,
    /// The exec's cgroup, when limits are on.
    pub cgroup: Option<ExecCgroup>,
}

impl Sandbox {
    /// No confinement: programs run as the agent, where it runs.
    pub fn unconfined() -> Self {
        Self {
            root: None,
            cgroup: None,
            description: "unconfined (host agent)".into(),
        }
    }

    /// Host testing: chroot into `dir` as the sandbox user; no mounts, no
    /// cgroups. `dir` must hold the programs to run.
    pub fn host_dir(dir: &Path) -> Self {
        let mut notes = Vec::new();
        if let Err(e) = ensure_home(dir) {
            notes.push(note(&e));
        }
        Self {
            root: Some(dir.to_owned()),
            cgroup: None,
            description: describe(dir, "host directory", None, &notes),
        }
    }

    /// PID 1: builds root, home and cgroups from the kernel command line
    /// settings; `warnings` (about rejected settings) join the description.
    pub fn guest(config: &Config, warnings: &[String]) -> Self {
        let mut notes = Vec::new();
        for w in warnings {
            klog!("settings: {w}");
            notes.push(w.clone());
        }

        let (root, kind) = if mounts::image_present() {
            match mounts::setup_image_root(config) {
                Ok(image) => {
                    for e in &image.failed {
                        notes.push(note(e));
                    }
                    let layer = match &image.disk {
                        Some(dev) => format!("/dev/{dev} ext4 disk overlay"),
                        None => format!("{} MiB tmpfs overlay", config.overlay_mib),
                    };
                    let kind =
                        format!("{} image {} + {layer}", image.fstype, mounts::IMAGE_DEVICE,);
                    (image.root, kind)
                }
                Err(e) => {
                    notes.push(note(&e));
                    (PathBuf::from("/"), "initramfs (image failed)".to_owned())
                }
            }
        } else {
            (PathBuf::from("/"), "initramfs, no image".to_owned())
        };
        if let Err(e) = ensure_home(&root) {
            notes.push(note(&e));
        }

        let total = meminfo::mem_total(&read_proc("/proc/meminfo"));
        let memory_max = meminfo::sandbox_limit(total.unwrap_or(0), config.sandbox_mem_mib);
        let cgroup = match SandboxCgroup::setup(memory_max, config.pids_max) {
            Ok(cg) => Some(cg),
            Err(e) => {
                notes.push(note(&e));
                None
            }
        };
        let limits = cgroup.as_ref().map(|cg| {
            format!(
                "cgroup {} memory.max={memory_max} pids.max={}",
                cg.dir().display(),
                config.pids_max
            )
        });
        let description = describe(&root, &kind, limits.as_deref(), &notes);
        klog!("sandbox: {description}");
        Self {
            root: Some(root),
            cgroup,
            description,
        }
    }

    /// Human-readable summary for `Pong::sandbox`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The sandbox root as the agent sees it (`None` when unconfined).
    /// Paths from requests are relative to it.
    // For the files API, which resolves request paths inside the root.
    #[allow(dead_code)]
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Prepares one exec: a fresh cgroup (when limits are on) and the
    /// child's entry steps. `cwd` is inside the sandbox root.
    pub fn prepare_exec(&self, cwd: Option<&str>) -> Result<ExecSandbox, SandboxError> {
        let Some(root) = &self.root else {
            return Ok(ExecSandbox::default());
        };
        let cgroup = self.cgroup.as_ref().map(|c| c.new_exec()).transpose()?;
        let procs = cgroup.as_ref().and_then(ExecCgroup::procs_fd);
        let entry = Entry::new(root, cwd, procs)?;
        Ok(ExecSandbox {
            entry: Some(entry),
            cgroup,
        })
    }
}

fn note(e: &dyn std::error::Error) -> String {
    let msg = chain(e);
    klog!("sandbox: {msg}");
    msg
}

fn describe(root: &Path, kind: &str, limits: Option<&str>, notes: &[String]) -> String {
    let mut s = format!(
        "root={} ({kind}); user {SANDBOX_UID} home {SANDBOX_HOME}; {}",
        root.display(),
        limits.unwrap_or("no cgroup limits")
    );
    if !notes.is_empty() {
        s.push_str("; errors: ");
        s.push_str(&notes.join("; "));
    }
    s
}

/// Why the home directory could not be made.
#[derive(Debug, Error)]
#[error("cannot prepare {}", .0.display())]
struct HomeError(PathBuf, #[source] io::Error);

/// Creates `<root>/home/sandbox` (0755, owned by the sandbox user) if
/// missing, and gives it to the sandbox user if someone else owns it.
fn ensure_home(root: &Path) -> Result<(), HomeError> {
    let home = home_in(root);
    let err = |e| HomeError(home.clone(), e);
    if !home.is_dir() {
        fs::create_dir_all(&home).map_err(err)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    let meta = fs::symlink_metadata(&home).map_err(err)?;
    if meta.uid() != SANDBOX_UID || meta.gid() != SANDBOX_UID {
        std::os::unix::fs::lchown(&home, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(err)?;
    }
    Ok(())
}

/// `<root>/home/sandbox`.
fn home_in(root: &Path) -> PathBuf {
    root.join(SANDBOX_HOME.trim_start_matches('/'))
}

/// A small `/proc` file as text (empty, with a log line, on error).
pub(crate) fn read_proc(path: &str) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Err(e) =
        fs::File::open(path).and_then(|f| f.take(MAX_PROC_FILE).read_to_string(&mut text))
    {
        klog!("sandbox: cannot read {path}: {e}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_inside_the_root() {
        assert_eq!(
            home_in(Path::new("/run/kiln/root")),
            Path::new("/run/kiln/root/home/sandbox")
        );
        assert_eq!(home_in(Path::new("/")), Path::new("/home/sandbox"));
    }

    #[test]
    fn unconfined_execs_get_no_entry_or_cgroup() {
        let s = Sandbox::unconfined();
        let e = s.prepare_exec(Some("/tmp")).expect("prepare");
        assert!(e.entry.is_none() && e.cgroup.is_none());
        assert!(s.root().is_none());
    }

    #[test]
    fn description_lists_errors() {
        let d = describe(Path::new("/"), "initramfs", None, &["x failed".into()]);
        assert!(d.contains("root=/ (initramfs)"), "{d}");
        assert!(d.contains("no cgroup limits"), "{d}");
        assert!(d.ends_with("errors: x failed"), "{d}");
    }

    #[test]
    fn nul_in_cwd_is_an_error() {
        let s = Sandbox {
            root: Some("/nonexistent".into()),
            cgroup: None,
            description: String::new(),
        };
        assert!(matches!(
            s.prepare_exec(Some("a\0")),
            Err(SandboxError::Nul(_))
        ));
    }
}
