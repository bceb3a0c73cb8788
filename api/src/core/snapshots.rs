//! Template snapshots: pools refill (and cold creates start) by restoring
//! clones instead of booting. The first cold boot of a template starts the
//! making of its snapshot: one more VM boots to agent-ready and snapshots
//! itself, stopping; from then on VMs of the template are restores.
//!
//! A snapshot is valid for one template as it is: its key hashes the VM
//! config and the identity (size, mtime, inode) of every file it boots
//! from, the VMM binary's included, so changing any of them makes the next
//! boot cold and a new snapshot. A restore that fails drops the snapshot
//! (and the next boots are cold again). Clones are distinct machines:
//! `VmProcess::wait_ready` reseeds each one's RNG and sets its clock.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::Core;
use crate::template::Template;

/// How long after a failed snapshot the template is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long taking the snapshot may take once the VM is ready.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A complete snapshot directory has this file (written last).
const COMPLETE: &str = "complete";

/// Where each template's snapshot stands.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    by_template: Mutex<BTreeMap<String, Entry>>,
    /// Clones of a snapshot whose guest crashed in a row, by snapshot dir.
    crashes: Mutex<BTreeMap<PathBuf, u32>>,
}

/// Clones whose guest crashes in a row before their snapshot is dropped:
/// one crash may be the host's (the testbed crashes a share of cold boots
/// too); a snapshot kiln-vmm refuses is dropped at once.
const CRASHES_TO_DROP: u32 = 3;

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    status: Status,
}

#[derive(Debug, Clone)]
enum Status {
    Making,
    Ready(PathBuf),
    Failed(Instant),
}

/// The key a template's snapshot is valid for (hex SHA-256), or `None`
/// when one of its files cannot be read.
fn snapshot_key(template: &Template, vmm: &Path) -> Option<String> {
    let mut h = Sha256::new();
    let config = serde_json::to_vec(&template.vm_config()).ok()?;
    h.update(&config);
    h.update(format!("disk_mib={:?}", template.disk_mib));
    let files = [
        Some(vmm),
        Some(&*template.kernel),
        Some(&*template.initramfs),
    ]
    .into_iter()
    .chain(std::iter::once(template.image.as_deref()))
    .flatten();
    for path in files {
        let m = std::fs::metadata(path).ok()?;
        h.update(path.as_os_str().as_encoded_bytes());
        for n in [m.len(), m.ino(), m.mtime() as u64, m.mtime_nsec() as u64] {
            h.update(n.to_le_bytes());
        }
    }
    Some(format!("{:x}", h.finalize()))
}

impl Snapshots {
    fn get(&self, template: &str) -> Option<Entry> {
        self.lock().get(template).cloned()
    }

    fn set(&self, template: &str, key: &str, status: Status) {
        self.lock().insert(
            template.to_string(),
            Entry {
                key: key.to_string(),
                status,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.by_template.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Core {
    fn snapshot_root(&self, template: &str) -> PathBuf {
        self.inner.config.state_dir.join("snapshots").join(template)
    }

    /// The current key of `template`'s snapshot, when snapshots are on for
    /// it.
    fn current_key(&self, template: &Template) -> Option<String> {
        if !self.config().pool.from_snapshot {
            return None;
        }
        snapshot_key(template, self.inner.launcher.snapshot_vmm()?)
    }

    /// The ready snapshot to restore `template` from, if any. A snapshot
    /// left by an earlier daemon with the current key counts.
    pub(super) fn template_snapshot(&self, template: &Template) -> Option<PathBuf> {
        let key = self.current_key(template)?;
        match self.inner.snapshots.get(&template.name) {
            Some(Entry {
                key: k,
                status: Status::Ready(dir),
            }) if k == key => return Some(dir),
            Some(e) if e.key == key => return None,
            _ => {}
        }
        let dir = self.snapshot_root(&template.name).join(&key);
        dir.join(COMPLETE).exists().then(|| {
            self.inner
                .snapshots
                .set(&template.name, &key, Status::Ready(dir.clone()));
            dir
        })
    }

    /// After a cold boot of `template`: starts making its snapshot unless
    /// it exists, is being made, or failed lately.
    pub(super) fn want_snapshot(&self, template: &Template) {
        let Some(key) = self.current_key(template) else {
            return;
        };
        if self.template_snapshot(template).is_some() {
            return;
        }
        {
            let mut map = self.inner.snapshots.lock();
            if let Some(e) = map.get(&template.name) {
                let busy = match e.status {
                    Status::Making => true,
                    Status::Failed(at) => e.key == key && at.elapsed() < RETRY_AFTER,
                    Status::Ready(_) => false,
                };
                if busy {
                    return;
                }
            }
            map.insert(
                template.name.clone(),
                Entry {
                    key: key.clone(),
                    status: Status::Making,
                },
            );
        }
        let core = self.clone();
        let template = template.clone();
        let span = tracing::info_span!("snapshot", template = %template.name);
        self.inner.tasks.spawn(
            async move {
                let stop = core.inner.stop.clone();
                tokio::select! {
                    () = core.make_snapshot(&template, &key) => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }

    async fn make_snapshot(&self, template: &Template, key: &str) {
        let started = Instant::now();
        let root = self.snapshot_root(&template.name);
        let dir = root.join(key);
        let partial = root.join(format!("{key}.partial"));
        match self.take_snapshot(template, &partial, &dir).await {
            Ok(()) => {
                tracing::info!(took = ?started.elapsed(), dir = %dir.display(), "template snapshot ready; VMs of this template are now restored clones");
                self.inner
                    .snapshots
                    .set(&template.name, key, Status::Ready(dir));
                remove_others(&root, key);
            }
            Err(e) => {
                tracing::warn!(error = %e, "template snapshot failed; VMs of this template boot cold");
                let _ = std::fs::remove_dir_all(&partial);
                self.inner
                    .snapshots
                    .set(&template.name, key, Status::Failed(Instant::now()));
            }
        }
    }

    /// Boots a VM whose snapshot goes to `partial`, snapshots it (it stops),
    /// then publishes `partial` as `dir`.
    async fn take_snapshot(
        &self,
        template: &Template,
        partial: &Path,
        dir: &Path,
    ) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(partial);
        std::fs::create_dir_all(partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        self.give_to_jail(template, partial)?;
        self.admit(u64::from(template.mem_mib))
            .map_err(|e| e.to_string())?;
        let vm = self
            .boot_vm_as(
                template,
                super::vms::Launch::ForSnapshot(partial.to_path_buf()),
            )
            .await
            .map_err(|f| f.error.to_string())?;
        let report = vm.process.snapshot(false, SNAPSHOT_TIMEOUT).await;
        // The VM stops after its snapshot (killed if it does not): out of
        // the books either way.
        self.forget_vm(&vm.id);
        let ended = vm.process.wait_or_kill(Duration::from_secs(30)).await;
        let report = report.map_err(|e| e.to_string())?;
        if let Err(e) = ended {
            return Err(format!("the snapshotted VM did not stop: {e}"));
        }
        tracing::debug!(?report, "snapshot written");
        std::fs::write(partial.join(COMPLETE), b"")
            .and_then(|()| std::fs::rename(partial, dir))
            .map_err(|e| format!("publishing {}: {e}", dir.display()))
    }

    /// As root with a jailed VMM, the VMM runs as the jail's uid: the
    /// snapshot directory must be its to write.
    fn give_to_jail(&self, template: &Template, dir: &Path) -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let jail = template.vm_config().jail;
        if !jail.enabled {
            return Ok(());
        }
        std::os::unix::fs::chown(dir, Some(jail.uid), Some(jail.gid))
            .map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// A clone restored from `dir` answered: its crash count starts over.
    pub(super) fn snapshot_restored(&self, dir: &Path) {
        self.inner
            .snapshots
            .crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dir);
    }

    /// A restore from `dir` failed. A refused snapshot (or clones whose
    /// guest crashed or never answered [`CRASHES_TO_DROP`] times in a row)
    /// is dropped, so the next
    /// VMs boot cold and a later cold boot makes a new one.
    pub(super) fn snapshot_failed(
        &self,
        template: &Template,
        dir: &Path,
        why: &str,
        guest_fault: bool,
    ) {
        if guest_fault {
            let mut crashes = self
                .inner
                .snapshots
                .crashes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = crashes.entry(dir.to_path_buf()).or_insert(0);
            *n += 1;
            if *n < CRASHES_TO_DROP {
                tracing::warn!(dir = %dir.display(), error = why, crashes = *n, "a clone's guest crashed; keeping the template snapshot");
                return;
            }
            crashes.remove(dir);
        }
        tracing::warn!(dir = %dir.display(), error = why, "restoring the template snapshot failed; dropping it");
        if let Some(key) = self.current_key(template) {
            self.inner
                .snapshots
                .set(&template.name, &key, Status::Failed(Instant::now()));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes every snapshot of a template but `key`'s (stale ones).
fn remove_others(root: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != key {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kiln-snapshots-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    fn template(dir: &Path) -> Template {
        for f in ["vmm", "vmlinux", "initramfs"] {
            std::fs::write(dir.join(f), f).expect("write");
        }
        Template {
            name: "t".into(),
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs"),
            image: None,
            vcpus: 1,
            mem_mib: 256,
            kernel_args: String::new(),
            huge_pages: true,
            disk_mib: None,
            env: Default::default(),
            working_dir: None,
            revision: None,
        }
    }

    #[test]
    fn the_key_changes_with_the_config_and_every_file() {
        let dir = scratch("key");
        let t = template(&dir);
        let vmm = dir.join("vmm");
        let key = snapshot_key(&t, &vmm).expect("key");
        assert_eq!(snapshot_key(&t, &vmm), Some(key.clone()), "stable");
        let mut bigger = t.clone();
        bigger.mem_mib = 512;
        assert_ne!(snapshot_key(&bigger, &vmm), Some(key.clone()));
        let mut with_disk = t.clone();
        with_disk.disk_mib = Some(4096);
        assert_ne!(snapshot_key(&with_disk, &vmm), Some(key.clone()));
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&t.initramfs, "rebuilt initramfs").expect("rewrite");
        let rebuilt = snapshot_key(&t, &vmm).expect("key");
        assert_ne!(rebuilt, key);
        std::fs::write(&vmm, "another vmm").expect("rewrite");
        assert_ne!(snapshot_key(&t, &vmm), Some(rebuilt));
        std::fs::remove_file(&t.kernel).expect("rm");
        assert_eq!(snapshot_key(&t, &vmm), None, "a missing file: no key");
    }

    #[test]
    fn stale_snapshots_are_removed() {
        let dir = scratch("stale");
        for k in ["old", "new", "new.partial"] {
            std::fs::create_dir_all(dir.join(k)).expect("mkdir");
        }
        remove_others(&dir, "new");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("new")]);
    }
}
