//! The template registry: templates users build or bring, kept in the
//! state directory, one directory each:
//!
//! ```text
//! <state>/templates/.lock               flock: one writer at a time
//! <state>/templates/<name>/template.json  the manifest (Manifest)
//! <state>/templates/<name>/<sha256>.erofs the image, content-addressed
//! ```
//!
//! A build copies its image in under a temporary name (hashing it), then,
//! under the lock, renames it to its content-addressed name and swaps the
//! manifest by rename: readers see the old template or the new one, never
//! a half-written one. The previous image stays (VMs booted from it may
//! still open it); older ones are removed. A directory without a manifest
//! (a build in progress or one that died) is not a template.

mod image;
mod lock;
mod manifest;
mod name;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use image::{detect as detect_image, ImageFormat};
pub use manifest::{BuildInfo, Manifest, TemplateSpec, FORMAT_VERSION};
pub use name::check_name;

use crate::artifacts::NotFound;
use image::TMP_PREFIX;
use lock::RegistryLock;

/// The manifest's file name in a template directory.
pub const MANIFEST: &str = "template.json";

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name that cannot be a registry template's.
    #[error("bad template name {name:?}: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// No such registry template.
    #[error("no template {0:?} in the registry")]
    NotFound(String),
    /// A manifest that cannot be read as one.
    #[error("corrupt template manifest {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file that is not an image the guest mounts.
    #[error("{path} is not an erofs or ext4 image: {reason}")]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value of the template out of range.
    #[error("invalid template: {0}")]
    BadSpec(String),
    /// Another writer held the registry's lock too long.
    #[error("the template registry {0} is busy (another build or removal holds its lock)")]
    Busy(PathBuf),
    /// A guest file the template names is missing.
    #[error(transparent)]
    Artifact(#[from] NotFound),
    /// A file operation failed (a full disk, permissions).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One entry of [`Registry::list`]: a template, or why its manifest is
/// unusable.
#[derive(Debug)]
pub struct Listed {
    /// The directory's name.
    pub name: String,
    /// The manifest.
    pub manifest: Result<Manifest, RegistryError>,
}

/// The registry of one state directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> RegistryError {
    move |source| RegistryError::Io { what, source }
}

impl Registry {
    /// The registry under `state_dir` (nothing is read or made yet).
    pub fn new(state_dir: &Path) -> Self {
        Registry {
            root: state_dir.join("templates"),
        }
    }

    /// `<state>/templates`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A template's directory.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Every template, by name; unusable manifests are listed with the
    /// reason. No registry yet is an empty one.
    pub fn list(&self) -> Result<Vec<Listed>, RegistryError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading {}", self.root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("reading {}", self.root.display())))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_err() || !entry.path().join(MANIFEST).exists() {
                continue; // the lock, removals in progress, unfinished builds
            }
            let manifest = self.get(&name);
            out.push(Listed { name, manifest });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Template `name`'s manifest.
    pub fn get(&self, name: &str) -> Result<Manifest, RegistryError> {
        check_name(name)?;
        let path = self.dir_of(name).join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        Manifest::parse(&path, &bytes)
    }

    /// Registers (or rebuilds) template `name` from the erofs/ext4 image
    /// at `image`, which is copied in; `source` says where it came from.
    /// On any error the registry is as it was.
    pub fn register(
        &self,
        name: &str,
        image: &Path,
        spec: TemplateSpec,
        source: &str,
    ) -> Result<Manifest, RegistryError> {
        check_name(name)?;
        spec.check()?;
        let dir = self.dir_of(name);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let result = self.register_in(name, &dir, image, spec, source);
        if result.is_err() {
            // A first build that failed leaves no empty directory (this
            // fails, as it should, when the directory holds anything).
            let _ = std::fs::remove_dir(&dir);
        }
        result
    }

    fn register_in(
        &self,
        name: &str,
        dir: &Path,
        image: &Path,
        spec: TemplateSpec,
        source: &str,
    ) -> Result<Manifest, RegistryError> {
        // The copy happens outside the lock (it may take a while); only
        // the swap is serialized.
        let staged = image::stage(image, dir)?;
        let _lock = RegistryLock::acquire(&self.root)?;
        let previous = self.get(name).ok();
        let file = staged.commit(dir)?;
        let manifest_path = dir.join(MANIFEST);
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            image_sha256: file.split('.').next().unwrap_or_default().to_string(),
            image_bytes: std::fs::metadata(dir.join(&file))
                .map_err(io(format!("reading {file}")))?
                .len(),
            image_format: detect_image(&dir.join(&file))?,
            image: file.clone(),
            spec,
            build: BuildInfo {
                source: source.to_string(),
                built_at_ms: crate::model::now_ms(),
                kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            revision: String::new(),
        };
        let mut bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RegistryError::BadSpec(e.to_string()))?;
        bytes.push(b'\n');
        let previous = previous.map(|p| p.image);
        if let Err(e) = write_atomically(&manifest_path, &bytes) {
            // The old manifest stands: its image stays, the new one goes.
            if previous.as_deref() != Some(file.as_str()) {
                let _ = std::fs::remove_file(dir.join(&file));
            }
            return Err(e);
        }
        let keep = [Some(file), previous];
        remove_stale(dir, &keep);
        Manifest::parse(&manifest_path, &bytes)
    }

    /// Removes template `name` (its directory disappears at once by
    /// rename, then is deleted). Whether anything uses it is the caller's
    /// business (the daemon checks its pools and sandboxes).
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        check_name(name)?;
        let _lock = RegistryLock::acquire(&self.root)?;
        let dir = self.dir_of(name);
        if !dir.join(MANIFEST).exists() {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let doomed = self
            .root
            .join(format!(".removed-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::rename(&dir, &doomed).map_err(io(format!("removing {}", dir.display())))?;
        std::fs::remove_dir_all(&doomed).map_err(io(format!("removing {}", doomed.display())))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!("writing {}", path.display()))(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How old a temporary file must be before a later build removes it (an
/// older one belongs to a build that died).
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes images other than `keep` and temporaries of dead builds.
fn remove_stale(dir: &Path, keep: &[Option<String>]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if name.starts_with(TMP_PREFIX) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP)
        } else {
            name != MANIFEST && !keep.iter().flatten().any(|k| *k == name)
        };
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::image::tests::fake_image;
    use super::*;

    /// A fresh directory for one test.
    pub(crate) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-registry-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    fn spec(mem_mib: u32) -> TemplateSpec {
        TemplateSpec {
            mem_mib,
            env: [("A".to_string(), "1".to_string())].into(),
            working_dir: Some("/work".into()),
            ..TemplateSpec::default()
        }
    }

    #[test]
    fn register_get_list_remove() {
        let dir = scratch("basic");
        let reg = Registry::new(&dir.join("state"));
        assert!(reg.list().expect("empty").is_empty());
        let img = dir.join("img");
        fake_image(&img, ImageFormat::Erofs, 1);
        let m = reg
            .register("t1", &img, spec(300), "image:test")
            .expect("register");
        assert_eq!(m.spec.mem_mib, 300);
        assert_eq!(m.image, format!("{}.erofs", m.image_sha256));
        assert_eq!(m.image_bytes, 8192);
        assert_eq!(reg.get("t1").expect("get"), m);
        let t = m.template(&reg.dir_of("t1"), false).expect("template");
        assert_eq!(t.image, Some(reg.dir_of("t1").join(&m.image)));
        assert_eq!(t.env["A"], "1");
        assert_eq!(t.revision.as_deref(), Some(m.revision.as_str()));
        let names: Vec<_> = reg
            .list()
            .expect("list")
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["t1"]);
        reg.remove("t1").expect("remove");
        assert!(matches!(reg.get("t1"), Err(RegistryError::NotFound(_))));
        assert!(matches!(reg.remove("t1"), Err(RegistryError::NotFound(_))));
        // Only the lock is left.
        let left: Vec<_> = std::fs::read_dir(reg.root())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".lock"]);
    }

    #[test]
    fn a_rebuild_swaps_the_manifest_and_keeps_one_previous_image() {
        let dir = scratch("rebuild");
        let reg = Registry::new(&dir.join("state"));
        let img = dir.join("img");
        let mut images = Vec::new();
        for fill in 1..=3u8 {
            fake_image(&img, ImageFormat::Erofs, fill);
            let m = reg
                .register("t", &img, spec(256), "image:x")
                .expect("register");
            images.push(m.image.clone());
        }
        let m = reg.get("t").expect("get");
        assert_eq!(m.image, images[2]);
        let t = reg.dir_of("t");
        assert!(t.join(&images[2]).is_file() && t.join(&images[1]).is_file());
        assert!(!t.join(&images[0]).exists(), "the oldest image is removed");
        // The same bytes again: the same file, a new revision (new build time).
        let again = reg.register("t", &img, spec(256), "image:x").expect("same");
        assert_eq!(again.image, images[2]);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let dir = scratch("bad");
        let reg = Registry::new(&dir.join("state"));
        let img = dir.join("img");
        fake_image(&img, ImageFormat::Ext4, 1);
        let m = reg
            .register("t", &img, spec(256), "image:x")
            .expect("register");
        let junk = dir.join("junk");
        std::fs::write(&junk, vec![0u8; 4096]).expect("junk");
        let e = reg.register("t", &junk, spec(256), "x").expect_err("junk");
        assert!(matches!(e, RegistryError::NotAnImage { .. }), "{e}");
        let e = reg
            .register("t", &img, spec(1), "x")
            .expect_err("tiny memory");
        assert!(e.to_string().contains("mem_mib"), "{e}");
        let e = reg.register("Bad", &img, spec(256), "x").expect_err("name");
        assert!(matches!(e, RegistryError::BadName { .. }), "{e}");
        let e = reg
            .register("minimal", &img, spec(256), "x")
            .expect_err("builtin");
        assert!(e.to_string().contains("built-in"), "{e}");
        assert_eq!(reg.get("t").expect("unchanged"), m);
        reg.register("u", &junk, spec(256), "x").expect_err("junk");
        assert!(
            !reg.dir_of("u").exists(),
            "a failed first build leaves no directory"
        );
        let files = std::fs::read_dir(reg.dir_of("t")).expect("ls").count();
        assert_eq!(files, 2, "the manifest and the image, no temporaries");
    }

    #[test]
    fn a_corrupt_manifest_is_reported_not_a_panic() {
        let dir = scratch("corrupt");
        let reg = Registry::new(&dir.join("state"));
        let img = dir.join("img");
        fake_image(&img, ImageFormat::Erofs, 1);
        reg.register("t", &img, spec(256), "x").expect("register");
        let path = reg.dir_of("t").join(MANIFEST);
        let good = std::fs::read_to_string(&path).expect("read");
        for (text, needle) in [
            ("{not json".to_string(), "corrupt template manifest"),
            (
                good.replace("\"format_version\": 1", "\"format_version\": 9"),
                "format_version 9",
            ),
            (
                good.replace("\"name\": \"t\"", "\"name\": \"u\""),
                "lives in",
            ),
            (good.replace(".erofs\"", ".ext4\""), "content-addressed"),
            (good.replace("\"vcpus\": 1", "\"vcpus\": 0"), "vcpus"),
            (good.replace("\"cmd\"", "\"bogus\": 1, \"cmd\""), "bogus"),
        ] {
            std::fs::write(&path, &text).expect("write");
            let e = reg.get("t").expect_err(needle).to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            let listed = reg.list().expect("list");
            assert!(listed[0].manifest.is_err(), "listed with its error");
        }
    }

    #[test]
    fn writers_wait_for_the_lock() {
        let dir = scratch("lock");
        let reg = Registry::new(&dir.join("state"));
        std::fs::create_dir_all(reg.root()).expect("root");
        let img = dir.join("img");
        fake_image(&img, ImageFormat::Erofs, 1);
        let held = RegistryLock::acquire(reg.root()).expect("lock");
        let r = reg.clone();
        let writer = std::thread::spawn(move || r.register("t", &img, spec(256), "x"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!writer.is_finished(), "the writer waits for the lock");
        assert!(reg.get("t").is_err(), "nothing visible while it waits");
        drop(held);
        writer
            .join()
            .expect("thread")
            .expect("registered after the lock");
        reg.get("t").expect("visible");
    }
}
