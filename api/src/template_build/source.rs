//! Where the image's files come from: an OCI layout directory as given, or
//! a `docker save` / `podman save` archive unpacked into the scratch
//! directory first. Every file is opened relative to the source's root with
//! `openat2(RESOLVE_IN_ROOT)`, so no symlink in it reaches outside.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::layer::{decompress, Budget, Step};
use super::limits::{MAX_ARCHIVE_ENTRIES, MAX_PATH_BYTES};
use super::resolve::Compression;
use super::tarstream::{for_each_entry, Kind};
use super::tree::inside_path;
use super::OciBuildError;

/// A directory whose files are read without leaving it.
#[derive(Debug)]
pub(crate) struct SourceDir {
    dir: File,
    path: PathBuf,
}

impl SourceDir {
    /// Opens `path` as a directory.
    pub(crate) fn open(path: &Path) -> Result<Self, OciBuildError> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OciBuildError::io("cannot open", path, e.into()))?;
        Ok(Self {
            dir: File::from(dir),
            path: path.to_owned(),
        })
    }

    /// The directory's path (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` for reading; `Ok(None)` when it does not exist.
    pub(crate) fn open_file(&self, rel: &str) -> Result<Option<File>, OciBuildError> {
        match rustix::fs::openat2(
            &self.dir,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                let is_file = file
                    .metadata()
                    .map_err(|e| OciBuildError::io("cannot stat", self.path.join(rel), e))?
                    .is_file();
                if !is_file {
                    return Err(OciBuildError::io(
                        "not a regular file:",
                        self.path.join(rel),
                        io::Error::from(io::ErrorKind::InvalidInput),
                    ));
                }
                Ok(Some(file))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(OciBuildError::io(
                "cannot open",
                self.path.join(rel),
                e.into(),
            )),
        }
    }

    /// Reads all of `rel`, refusing more than `max` bytes; `Ok(None)` when it
    /// does not exist.
    pub(crate) fn read_bounded(
        &self,
        rel: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>, OciBuildError> {
        let Some(file) = self.open_file(rel)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| OciBuildError::io("cannot read", self.path.join(rel), e))?;
        if bytes.len() as u64 > max {
            return Err(OciBuildError::json(
                rel,
                format!("larger than the {max}-byte limit"),
            ));
        }
        Ok(Some(bytes))
    }
}

/// Unpacks the archive `archive` (plain, gzip or zstd) into the new
/// directory `into`: regular files, directories and symlinks only (old
/// `docker save` archives link repeated layers), names checked like layer
/// entries. Symlinks are made last, so no write goes through one; reads
/// resolve them inside `into` ([`SourceDir`]). At most `max_bytes` are
/// read from the (decompressed) archive.
pub(crate) fn unpack_archive(
    archive: &Path,
    into: &Path,
    max_bytes: u64,
) -> Result<(), OciBuildError> {
    let corrupt = |source: io::Error| OciBuildError::Archive {
        path: archive.to_owned(),
        source,
    };
    std::fs::create_dir(into).map_err(|e| OciBuildError::io("cannot create", into, e))?;
    let file = File::open(archive).map_err(|e| OciBuildError::io("cannot open", archive, e))?;
    let stream = decompress(io::BufReader::new(file), Compression::Sniff).map_err(corrupt)?;
    let stream = Budget::new(stream, max_bytes);
    let mut links = Vec::new();
    let mut count = 0usize;
    for_each_entry(stream, MAX_ARCHIVE_ENTRIES, |meta, body| {
        count += 1;
        let Some(rel) = safe_relative(&meta.path) else {
            if meta.kind == Kind::Dir && inside_path(&meta.path) == Ok(None) {
                return Ok(()); // "./"
            }
            return Err(Step::Build(corrupt(io::Error::other(format!(
                "entry {:?} is not a plain relative path",
                String::from_utf8_lossy(&meta.path)
            )))));
        };
        let dest = into.join(rel);
        let made = match &meta.kind {
            Kind::Dir => std::fs::create_dir_all(&dest),
            Kind::File => create_parent(&dest).and_then(|()| {
                let mut out = File::create(&dest)?;
                io::copy(body, &mut out).map(|_| ())
            }),
            Kind::Symlink(target) => {
                links.push((OsStr::from_bytes(target).to_owned(), dest));
                return Ok(());
            }
            // Other entry types never carry image data.
            _ => return Ok(()),
        };
        made.map_err(|e| {
            Step::Build(match e.kind() {
                io::ErrorKind::UnexpectedEof => corrupt(e),
                _ => OciBuildError::io("cannot unpack into", dest.clone(), e),
            })
        })
    })
    .map_err(|e| match e {
        Step::Build(e) => e,
        Step::Tar(e) => corrupt(io::Error::other(e.to_string())),
    })?;
    if count == 0 {
        return Err(corrupt(io::Error::other("no entries")));
    }
    for (target, dest) in links {
        create_parent(&dest)
            .and_then(|()| std::os::unix::fs::symlink(&target, &dest))
            .map_err(|e| OciBuildError::io("cannot unpack into", dest.clone(), e))?;
    }
    Ok(())
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p),
        None => Ok(()),
    }
}

/// `raw` as a relative path of normal components (`.` and leading `/`
/// dropped), or `None` when it has `..`, is empty or too long.
pub(crate) fn safe_relative(raw: &[u8]) -> Option<PathBuf> {
    if raw.len() > MAX_PATH_BYTES {
        return None;
    }
    inside_path(raw).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_drops_dots_and_refuses_parents() {
        assert_eq!(safe_relative(b"./a/b/").as_deref(), Some(Path::new("a/b")));
        assert_eq!(
            safe_relative(b"/etc/x").as_deref(),
            Some(Path::new("etc/x"))
        );
        assert!(safe_relative(b"a/../../b").is_none());
        assert!(safe_relative(b"./").is_none());
        assert!(safe_relative(&vec![b'a'; MAX_PATH_BYTES + 1]).is_none());
    }

    #[test]
    fn reads_are_bounded_and_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).expect("link");
        let src = SourceDir::open(dir.path()).expect("open");
        assert!(src.read_bounded("big", 99).is_err());
        assert_eq!(
            src.read_bounded("big", 100).expect("read").map(|b| b.len()),
            Some(100)
        );
        // The absolute link resolves inside the directory, where there is
        // no etc/passwd.
        assert!(src.read_bounded("escape", 1000).expect("read").is_none());
        assert!(src.read_bounded("missing", 1).expect("read").is_none());
    }
}
