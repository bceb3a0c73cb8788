//! What the jail's root holds: each file or directory the VM needs, at the
//! same absolute path as on the host, so paths in the config (and the vsock
//! socket path host clients use) mean the same thing inside.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;
use crate::hypervisor::kvm::KVM_PATH;

/// How a host path appears in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read-only (kernel, initramfs, read-only drives).
    ReadOnly,
    /// Read-write (read-write drives, serial log, the vsock socket's directory).
    ReadWrite,
    /// A device node (`/dev/kvm`): read-write, device access kept.
    Device,
}

/// One bind mount of the jail's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPath {
    /// Absolute path, the same on the host and in the jail.
    pub path: PathBuf,
    /// How it is mounted.
    pub access: Access,
}

/// `path` made absolute with symlinks resolved when it exists (inside the
/// jail there is no working directory to be relative to, and no symlink
/// outside the bound paths to follow); made absolute only when it does not.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// A file the VMM creates: its directory resolved, its name kept.
fn resolve_new_file(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            resolve(dir).join(name)
        }
        _ => resolve(path),
    }
}

/// Rewrites every path in `config` to an absolute one that also resolves in
/// the jail, creates the serial log (so it can be bound), and returns what
/// the jail's root must hold. Paths that do not exist are left out: the
/// build then fails on them with its usual error.
pub fn plan(config: &mut VmConfig) -> Vec<JailPath> {
    let mut paths = vec![JailPath {
        path: PathBuf::from(KVM_PATH),
        access: Access::Device,
    }];
    // A restore never reads the kernel or initramfs: the snapshot holds
    // the booted guest. Left out, they cost no mounts and are not in reach.
    let boots = config.restore.is_none();
    config.kernel = resolve(&config.kernel);
    if boots {
        paths.push(JailPath {
            path: config.kernel.clone(),
            access: Access::ReadOnly,
        });
    }
    if let Some(initramfs) = &mut config.initramfs {
        *initramfs = resolve(initramfs);
        if boots {
            paths.push(JailPath {
                path: initramfs.clone(),
                access: Access::ReadOnly,
            });
        }
    }
    for drive in &mut config.drives {
        drive.path = resolve(&drive.path);
        let access = if drive.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        paths.push(JailPath {
            path: drive.path.clone(),
            access,
        });
    }
    if let Some(log) = &mut config.serial_log {
        *log = resolve_new_file(log);
        // Created (never truncated) here so it can be bound; the serial
        // device truncates it inside the jail as it would outside.
        let _ = OpenOptions::new().append(true).create(true).open(&*log);
        paths.push(JailPath {
            path: log.clone(),
            access: Access::ReadWrite,
        });
    }
    if let Some(vsock) = &mut config.vsock {
        vsock.uds_path = resolve_new_file(&vsock.uds_path);
        // The listener, guest-initiated connections to `<uds>_<port>` and
        // the socket's removal all need its directory.
        if let Some(dir) = vsock.uds_path.parent() {
            paths.push(JailPath {
                path: dir.to_owned(),
                access: Access::ReadWrite,
            });
        }
    }
    if let Some(control) = &mut config.control {
        control.socket = resolve_new_file(&control.socket);
        control.snapshot_dir = resolve(&control.snapshot_dir);
        // The socket is created (and removed) in its directory; snapshots
        // are written into theirs.
        if let Some(dir) = control.socket.parent() {
            paths.push(JailPath {
                path: dir.to_owned(),
                access: Access::ReadWrite,
            });
        }
        paths.push(JailPath {
            path: control.snapshot_dir.clone(),
            access: Access::ReadWrite,
        });
    }
    if let Some(restore) = &mut config.restore {
        *restore = resolve(restore);
        // Read, and its memory file mapped private: never written.
        paths.push(JailPath {
            path: restore.clone(),
            access: Access::ReadOnly,
        });
    }
    arrange(paths)
}

/// Drops paths that do not exist and duplicates (keeping the most
/// permissive access), and orders them so a directory is bound before
/// anything below it.
pub fn arrange(mut paths: Vec<JailPath>) -> Vec<JailPath> {
    paths.retain(|p| p.path.is_absolute() && std::fs::symlink_metadata(&p.path).is_ok());
    paths.sort_by(|a, b| {
        a.path
            .components()
            .count()
            .cmp(&b.path.components().count())
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| b.access.cmp(&a.access))
    });
    paths.dedup_by(|later, earlier| later.path == earlier.path);
    paths
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::{DriveConfig, VsockConfig};

    #[test]
    fn config_paths_become_absolute_and_bound() {
        let dir = std::env::temp_dir().join(format!("kiln-jail-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("vmlinux"), b"k").unwrap();
        std::fs::write(dir.join("disk"), b"d").unwrap();
        std::os::unix::fs::symlink(dir.join("vmlinux"), dir.join("link")).unwrap();
        let mut config = VmConfig::new(dir.join("link"));
        config.initramfs = Some(dir.join("missing.cpio"));
        config.drives = vec![
            DriveConfig {
                path: dir.join("disk"),
                read_only: true,
            },
            DriveConfig {
                path: dir.join("disk"),
                read_only: false,
            },
        ];
        config.serial_log = Some(dir.join("run/serial.log"));
        config.vsock = Some(VsockConfig {
            uds_path: dir.join("run/../run/v.sock"),
            guest_cid: 3,
        });
        let canon = std::fs::canonicalize(&dir).unwrap();
        let paths = plan(&mut config);
        assert_eq!(config.kernel, canon.join("vmlinux"), "symlink resolved");
        assert_eq!(config.initramfs, Some(dir.join("missing.cpio")));
        assert_eq!(
            config.vsock.as_ref().unwrap().uds_path,
            canon.join("run/v.sock")
        );
        assert!(canon.join("run/serial.log").exists(), "serial log created");
        let got: Vec<(PathBuf, Access)> = paths.into_iter().map(|p| (p.path, p.access)).collect();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("/dev/kvm"), Access::Device),
                (canon.join("disk"), Access::ReadWrite),
                (canon.join("run"), Access::ReadWrite),
                (canon.join("vmlinux"), Access::ReadOnly),
                (canon.join("run/serial.log"), Access::ReadWrite),
            ]
            .into_iter()
            .filter(|(p, _)| p.exists())
            .collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_restore_binds_its_snapshot_but_no_kernel() {
        let dir = std::env::temp_dir().join(format!("kiln-jail-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("snapshot")).unwrap();
        std::fs::write(dir.join("vmlinux"), b"k").unwrap();
        std::fs::write(dir.join("initramfs.cpio"), b"i").unwrap();
        let mut config = VmConfig::new(dir.join("vmlinux"));
        config.initramfs = Some(dir.join("initramfs.cpio"));
        config.restore = Some(dir.join("snapshot"));
        let canon = std::fs::canonicalize(&dir).unwrap();
        let got: Vec<(PathBuf, Access)> = plan(&mut config)
            .into_iter()
            .map(|p| (p.path, p.access))
            .collect();
        let mut expected = vec![(canon.join("snapshot"), Access::ReadOnly)];
        if Path::new(KVM_PATH).exists() {
            expected.insert(0, (PathBuf::from(KVM_PATH), Access::Device));
        }
        assert_eq!(got, expected);
        assert_eq!(config.kernel, canon.join("vmlinux"), "still resolved");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
