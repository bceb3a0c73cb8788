//! The scratch tree the layers are applied to, one entry at a time.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` from the tree's
//! root, so a symlink from this or an earlier layer (`/etc -> /`, `x ->
//! ../../..`) resolves inside the tree, as it will in the guest, and never
//! reaches the host. The entry itself is made with `*at` calls on its
//! parent directory and its last component is never followed. Each
//! entry gets its mtime at once, and the directory it changes gets its own
//! back, so no per-directory state is kept however large the image.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::tarstream::{EntryMeta, Kind};
use super::OciBuildError;

/// Marks a directory as opaque: lower layers' entries in it are hidden.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Most symlinks followed while making a directory (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;
/// Prefix of a whiteout: `.wh.NAME` deletes `NAME` from lower layers.
const WHITEOUT: &[u8] = b".wh.";

/// The tree being built.
#[derive(Debug)]
pub(crate) struct Tree {
    root: OwnedFd,
    path: PathBuf,
    /// `path` with symlinks resolved, as `/proc/self/fd` shows it.
    real_path: PathBuf,
    max_mtime: i64,
}

/// What applying one layer tracks: the paths it made (an opaque marker
/// hides only lower layers' entries), as hashes so a layer's millions of
/// paths cost 8 bytes each.
#[derive(Debug, Default)]
pub(crate) struct LayerState {
    made: HashSet<u64>,
    keys: RandomState,
}

impl LayerState {
    fn key(&self, rel: &Path) -> u64 {
        self.keys.hash_one(rel)
    }
}

impl Tree {
    /// Creates the (new) directory `path` as an empty tree root.
    pub(crate) fn create(path: &Path) -> Result<Self, OciBuildError> {
        std::fs::create_dir(path).map_err(|e| OciBuildError::io("cannot create", path, e))?;
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OciBuildError::io("cannot open", path, e.into()))?;
        rustix::fs::chmodat(&root, ".", Mode::from_raw_mode(0o755), AtFlags::empty())
            .map_err(|e| OciBuildError::io("cannot chmod", path, e.into()))?;
        let real_path = std::fs::canonicalize(path)
            .map_err(|e| OciBuildError::io("cannot resolve", path, e))?;
        Ok(Self {
            root,
            path: path.to_owned(),
            real_path,
            max_mtime: 0,
        })
    }

    /// The tree's root directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The newest mtime any entry carried.
    pub(crate) fn max_mtime(&self) -> i64 {
        self.max_mtime
    }

    /// Applies one layer entry; `body` is a regular file's content.
    pub(crate) fn apply(
        &mut self,
        layer: &str,
        state: &mut LayerState,
        meta: &EntryMeta,
        body: &mut dyn Read,
    ) -> Result<(), OciBuildError> {
        let fail = |source: io::Error| OciBuildError::Apply {
            layer: layer.to_owned(),
            entry: String::from_utf8_lossy(&meta.path).into_owned(),
            source,
        };
        let Some(rel) = inside_path(&meta.path).map_err(|()| traversal(layer, &meta.path))? else {
            // The root itself ("./"): only its metadata can change.
            if meta.kind != Kind::Dir {
                return Err(fail(io::Error::other("the root must be a directory")));
            }
            let root = self.root_fd().map_err(fail)?;
            return self.set_meta(layer, &root, ".", meta, Path::new(""));
        };
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        if name == OPAQUE {
            return match self.find_dir(parent_rel).map_err(fail)? {
                Some(dir) => {
                    keeping_mtime(&dir, || make_opaque(&dir, parent_rel, state)).map_err(fail)
                }
                None => Ok(()),
            };
        }
        if let Some(target) = name.strip_prefix(WHITEOUT) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(traversal(layer, &meta.path));
            }
            return match self.find_dir(parent_rel).map_err(fail)? {
                Some(dir) => {
                    keeping_mtime(&dir, || remove_at(&dir, OsStr::from_bytes(target))).map_err(fail)
                }
                None => Ok(()),
            };
        }
        let parent = self.open_dir(parent_rel).map_err(fail)?;
        let name = OsStr::from_bytes(name);
        let parent_mtime = mtime_of(&parent).map_err(fail)?;
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if meta.kind == Kind::Dir
                    && FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => remove_at(&parent, name).map_err(fail)?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(fail(e.into())),
        }
        self.make(layer, &parent, name, meta, body)
            .map_err(|e| match e {
                Made::Io(e) => fail(e),
                Made::Build(e) => e,
            })?;
        if !matches!(meta.kind, Kind::HardLink(_)) {
            self.set_meta(layer, &parent, name, meta, &rel)?;
        }
        // Making the entry changed the parent's mtime; the layers say what
        // it is.
        set_time(&parent, OsStr::new("."), parent_mtime).map_err(fail)?;
        state.made.insert(state.key(&rel));
        Ok(())
    }

    fn make(
        &self,
        layer: &str,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &EntryMeta,
        body: &mut dyn Read,
    ) -> Result<(), Made> {
        let private = Mode::from_raw_mode(0o600);
        match &meta.kind {
            // An existing directory is kept (only its metadata changes).
            Kind::Dir => match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            },
            Kind::File => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    private,
                )?;
                io::copy(body, &mut File::from(fd))?;
            }
            Kind::Symlink(target) => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), parent, name)?
            }
            Kind::HardLink(target) => {
                let target_rel = match inside_path(target) {
                    Ok(Some(t)) => t,
                    _ => return Err(Made::Build(traversal(layer, target))),
                };
                let target_name = target_rel.file_name().unwrap_or_default();
                let dir = self
                    .find_dir(target_rel.parent().unwrap_or(Path::new("")))?
                    .ok_or_else(|| {
                        io::Error::other("hard link target's directory does not exist")
                    })?;
                rustix::fs::linkat(&dir, target_name, parent, name, AtFlags::empty())?;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                let device = match meta.kind {
                    Kind::Char(..) => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let dev = rustix::fs::makedev(*major, *minor);
                rustix::fs::mknodat(parent, name, device, private, dev)?;
            }
            Kind::Fifo => rustix::fs::mknodat(parent, name, FileType::Fifo, private, 0)?,
        }
        Ok(())
    }

    /// Owner, then mode (a chown clears set-uid bits), then xattrs (a chown
    /// clears `security.capability`), then mtime.
    fn set_meta(
        &mut self,
        layer: &str,
        parent: &OwnedFd,
        name: impl AsRef<OsStr>,
        meta: &EntryMeta,
        rel: &Path,
    ) -> Result<(), OciBuildError> {
        let name = name.as_ref();
        let fail = |source: io::Error| OciBuildError::Apply {
            layer: layer.to_owned(),
            entry: rel.display().to_string(),
            source,
        };
        let is_link = matches!(meta.kind, Kind::Symlink(_));
        rustix::fs::chownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(e.into()))?;
        if !is_link {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| fail(e.into()))?;
        }
        if !meta.xattrs.is_empty() {
            // The parent is a trusted directory fd and `name` one component
            // that is not followed: lsetxattr through /proc reaches exactly
            // the entry just made.
            let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path = CString::new(path).map_err(io::Error::other).map_err(fail)?;
            for (key, value) in &meta.xattrs {
                let key = CString::new(key.clone())
                    .map_err(io::Error::other)
                    .map_err(fail)?;
                rustix::fs::lsetxattr(path.as_c_str(), key.as_c_str(), value, XattrFlags::empty())
                    .map_err(|e| fail(io::Error::other(format!("xattr {key:?}: {e}"))))?;
            }
        }
        self.max_mtime = self.max_mtime.max(meta.mtime);
        set_mtime(parent, name, meta.mtime).map_err(fail)?;
        Ok(())
    }

    fn root_fd(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.root,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Opens the directory `rel` (inside the root), `None` if missing.
    pub(crate) fn find_dir(&self, rel: &Path) -> io::Result<Option<OwnedFd>> {
        if rel.as_os_str().is_empty() {
            return self.root_fd().map(Some);
        }
        match rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the directory `rel`, creating missing ones (0755, root's),
    /// also where a symlink points (inside the tree) at a missing one, as
    /// the guest would find them.
    pub(crate) fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_dir_within(rel, MAX_SYMLINK_HOPS)
    }

    fn open_dir_within(&self, rel: &Path, hops: usize) -> io::Result<OwnedFd> {
        if let Some(fd) = self.find_dir(rel)? {
            return Ok(fd);
        }
        let parent = self.open_dir_within(rel.parent().unwrap_or(Path::new("")), hops)?;
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other("bad directory path"))?;
        keeping_mtime(&parent, || {
            match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })?;
        if let Some(fd) = self.find_dir(rel)? {
            return Ok(fd);
        }
        // `name` is a symlink to a missing directory: make that one.
        let target = rustix::fs::readlinkat(&parent, name, Vec::new())
            .map_err(|_| io::Error::from(io::ErrorKind::NotADirectory))?;
        if hops == 0 {
            return Err(Errno::LOOP.into());
        }
        let base = if target.as_bytes().starts_with(b"/") {
            PathBuf::new()
        } else {
            self.rel_of(&parent)?
        };
        let next = clamp_in_root(&base.join(OsStr::from_bytes(target.as_bytes())));
        self.open_dir_within(&next, hops - 1)
    }

    /// Where the open directory `dir` is, relative to the root.
    fn rel_of(&self, dir: &OwnedFd) -> io::Result<PathBuf> {
        let at = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        at.strip_prefix(&self.real_path)
            .map(Path::to_owned)
            .map_err(|_| io::Error::other("directory outside the tree"))
    }

    /// Opens the existing file `rel` inside the root, following symlinks
    /// inside it.
    pub(crate) fn open_file(&self, rel: &Path, flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(File::from(fd))
    }
}

/// Why making an entry failed.
enum Made {
    Io(io::Error),
    Build(OciBuildError),
}

impl From<io::Error> for Made {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<Errno> for Made {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

fn traversal(layer: &str, path: &[u8]) -> OciBuildError {
    OciBuildError::PathTraversal {
        layer: layer.to_owned(),
        entry: String::from_utf8_lossy(path).into_owned(),
    }
}

/// `raw` as a path inside the root: `Ok(None)` for the root itself,
/// `Err` when a `..` component could leave it.
pub(crate) fn inside_path(raw: &[u8]) -> Result<Option<PathBuf>, ()> {
    if raw.contains(&0) {
        return Err(());
    }
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `path` with `.` dropped and `..` resolved lexically, never above the
/// root (as `RESOLVE_IN_ROOT` treats it).
fn clamp_in_root(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Removes the entries of the directory `dir` (at `dir_rel`) that lower
/// layers made.
fn make_opaque(dir: &OwnedFd, dir_rel: &Path, state: &LayerState) -> io::Result<()> {
    for name in list_dir(dir)? {
        if !state.made.contains(&state.key(&dir_rel.join(&name))) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Runs `f`, which changes the directory `dir`, and puts back its mtime.
fn keeping_mtime<T>(dir: &OwnedFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let before = mtime_of(dir)?;
    let out = f()?;
    set_time(dir, OsStr::new("."), before)?;
    Ok(out)
}

/// The mtime of an open file or directory.
fn mtime_of(fd: &OwnedFd) -> io::Result<Timespec> {
    let st = rustix::fs::fstat(fd)?;
    Ok(Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    })
}

fn set_mtime(dir: &OwnedFd, name: &OsStr, mtime: i64) -> io::Result<()> {
    set_time(
        dir,
        name,
        Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    )
}

/// Sets atime and mtime of `name` in `dir` (not following it).
fn set_time(dir: &OwnedFd, name: &OsStr, t: Timespec) -> io::Result<()> {
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn list_dir(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir`, recursively when a directory; symlinks are
/// removed, never followed.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let child = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for entry in list_dir(&child)? {
            remove_at(&child, &entry)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_paths() {
        assert_eq!(inside_path(b"./").expect("root"), None);
        assert_eq!(
            inside_path(b"/a/./b").expect("ok"),
            Some(PathBuf::from("a/b"))
        );
        assert!(inside_path(b"a/../b").is_err());
        assert!(inside_path(b"..").is_err());
    }

    #[test]
    fn clamping_stops_at_the_root() {
        assert_eq!(
            clamp_in_root(Path::new("a/../../../b/./c")),
            PathBuf::from("b/c")
        );
        assert_eq!(clamp_in_root(Path::new("/x/..")), PathBuf::new());
    }

    fn meta(path: &str, kind: Kind) -> EntryMeta {
        EntryMeta {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn writes_through_links_land_inside_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        let mut tree = Tree::create(&dir.path().join("root")).expect("tree");
        let mut state = LayerState::default();
        let link = |t: &str| Kind::Symlink(t.as_bytes().to_vec());
        for m in [
            meta("abs", link(outside.to_str().expect("utf-8"))),
            meta("up", link("../../../..")),
            meta("abs/a/b", Kind::Dir),
            meta("up/c", Kind::Dir),
        ] {
            tree.apply("l", &mut state, &m, &mut io::empty())
                .expect("apply");
        }
        assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0);
        let inside = dir
            .path()
            .join("root")
            .join(outside.strip_prefix("/").expect("absolute"));
        assert!(inside.join("a/b").is_dir());
        assert!(dir.path().join("root/c").is_dir());
    }
}
