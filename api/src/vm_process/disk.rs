//! A VM's writable disk: a sparse host file holding an empty ext4 file
//! system, which the guest agent mounts as the sandbox's writable layer
//! (overlay upper, `/tmp`) instead of a memory-backed tmpfs. It has no
//! journal: it lives and dies with one VM, and nothing on it must survive
//! a crash. Only the blocks the guest writes take host space.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::SeekFrom;

/// The disk's file name in a run directory, and in a snapshot directory
/// (the disk as it was when the snapshot was taken).
pub const DISK_NAME: &str = "disk.ext4";

/// Smallest disk (MiB): room for the file system's own metadata.
pub const MIN_DISK_MIB: u32 = 16;

/// Where e2fsprogs' `mke2fs` is looked for: sbin first (Debian keeps it
/// there, which a normal user's `PATH` lacks, and a busybox `mke2fs` on
/// `PATH` lacks the options used here), then `PATH`.
const MKE2FS: [&str; 3] = ["/usr/sbin/mke2fs", "/sbin/mke2fs", "mke2fs"];

/// Making or copying a VM's disk failed; nothing is left behind.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The host file system has less free space than the disk's size.
    #[error(
        "the host file system of {} has {free_mib} MiB free, less than the \
         {need_mib} MiB writable disk the VM asks for",
        dir.display()
    )]
    NoSpace {
        /// Directory the disk would live in.
        dir: PathBuf,
        /// Free MiB there (for an unprivileged user).
        free_mib: u64,
        /// The disk's size, MiB.
        need_mib: u32,
    },
    /// The VM has no runtime image for the disk to be the writable layer of.
    #[error("a writable disk needs a runtime image: it is the writable layer over the image")]
    NoImage,
    /// The size is below [`MIN_DISK_MIB`].
    #[error("a writable disk must be at least {MIN_DISK_MIB} MiB, not {0} MiB")]
    TooSmall(u32),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `mke2fs` could not be run (e2fsprogs missing) or failed.
    #[error("formatting {} with mke2fs (e2fsprogs): {detail}", path.display())]
    Mkfs {
        /// The disk file.
        path: PathBuf,
        /// What mke2fs said, or why it could not run.
        detail: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a disk the host cannot hold: `mib` must fit in the free space
/// of `dir`'s file system. The file is sparse, so this is a promise the
/// host makes at creation; other writers can still fill the host later,
/// and the guest then sees I/O errors on that disk.
fn check_space(dir: &Path, mib: u32) -> Result<(), DiskError> {
    let st =
        rustix::fs::statvfs(dir).map_err(|e| io_err("checking free space of", dir)(e.into()))?;
    let free_mib = st.f_bavail.saturating_mul(st.f_frsize) >> 20;
    if free_mib < u64::from(mib) {
        return Err(DiskError::NoSpace {
            dir: dir.to_path_buf(),
            free_mib,
            need_mib: mib,
        });
    }
    Ok(())
}

/// Creates `path` (must not exist) as a sparse `mib` MiB file holding an
/// empty ext4 file system whose root belongs to root. On failure the file
/// is removed.
pub fn create(path: &Path, mib: u32) -> Result<(), DiskError> {
    if mib < MIN_DISK_MIB {
        return Err(DiskError::TooSmall(mib));
    }
    check_space(path.parent().unwrap_or(Path::new(".")), mib)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err("creating", path))?;
    // From here on the file is ours to remove on failure.
    let made = file
        .set_len(u64::from(mib) << 20)
        .map_err(io_err("sizing", path))
        .and_then(|()| format(path));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

fn format(path: &Path) -> Result<(), DiskError> {
    // No journal (see the module doc); inode tables left for the kernel
    // to treat as unused (the guest mounts with noinit_itable, so they are
    // never zeroed and the file stays sparse); no blocks reserved for root.
    let args = [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        "-L",
        "kiln-disk",
    ];
    let mut last = String::from("mke2fs not found");
    for program in MKE2FS {
        let out = Command::new(program)
            .args(args)
            .arg(path)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(DiskError::Mkfs {
                    path: path.to_path_buf(),
                    detail: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = format!("{program}: {e}"),
            Err(e) => {
                return Err(DiskError::Mkfs {
                    path: path.to_path_buf(),
                    detail: format!("{program}: {e}"),
                })
            }
        }
    }
    Err(DiskError::Mkfs {
        path: path.to_path_buf(),
        detail: last,
    })
}

/// Whether files in `dir` live in memory (tmpfs, ramfs): their written
/// blocks are then RAM charged to whoever writes them, here the VMM's
/// memory cgroup.
pub fn in_memory(dir: &Path) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::statfs(dir).is_ok_and(|st| {
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let kind = st.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// Copies the disk `src` to `dst` (must not exist), keeping it sparse: a
/// reflink where the file system can, else only the ranges that hold data.
/// On failure `dst` is removed.
pub fn copy(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let from = File::open(src).map_err(io_err("opening", src))?;
    let len = from.metadata().map_err(io_err("reading", src))?.len();
    let mib = u32::try_from(len >> 20).unwrap_or(u32::MAX);
    check_space(
        dst.parent().unwrap_or(Path::new(".")),
        mib.min(used_mib(&from)),
    )?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io_err("creating", dst))?;
    let copied = if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        Ok(())
    } else {
        copy_data_ranges(&from, &to, len).map_err(io_err("copying into", dst))
    };
    if copied.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    copied
}

/// MiB of blocks `file` takes on its host file system.
fn used_mib(file: &File) -> u32 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().map_or(u32::MAX, |m| {
        u32::try_from((m.blocks() * 512) >> 20).unwrap_or(u32::MAX)
    })
}

/// Copies the data ranges of `from` (found with `SEEK_DATA`/`SEEK_HOLE`)
/// to the same offsets of `to`, then sizes `to` like `from`, so holes stay
/// holes.
fn copy_data_ranges(from: &File, to: &File, len: u64) -> io::Result<()> {
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(from, SeekFrom::Hole(start))?.min(len);
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let chunk = usize::try_from(end - off_in).unwrap_or(usize::MAX);
            let n = rustix::fs::copy_file_range(
                from,
                Some(&mut off_in),
                to,
                Some(&mut off_out),
                chunk,
            )?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the disk shrank while it was copied",
                ));
            }
        }
        pos = end;
    }
    to.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;

    fn mke2fs_present() -> bool {
        MKE2FS.iter().any(|p| {
            Command::new(p)
                .arg("-V")
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .is_ok()
        })
    }

    #[test]
    fn a_new_disk_is_a_sparse_ext4_file_of_the_asked_size() {
        assert!(
            mke2fs_present(),
            "e2fsprogs (mke2fs) is needed for this test"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DISK_NAME);
        create(&path, 1024).expect("create");
        let m = std::fs::metadata(&path).expect("stat");
        assert_eq!(m.len(), 1 << 30);
        assert!(
            m.blocks() * 512 < 32 << 20,
            "not sparse: {} blocks",
            m.blocks()
        );
        let mut magic = [0u8; 2];
        let f = File::open(&path).expect("open");
        rustix::io::pread(&f, &mut magic, 1024 + 0x38).expect("read superblock");
        assert_eq!(magic, [0x53, 0xef], "ext4 superblock magic");
    }

    #[test]
    fn refusals_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DISK_NAME);
        assert!(matches!(create(&path, 1), Err(DiskError::TooSmall(1))));
        let err = create(&path, u32::MAX).expect_err("more than the host holds");
        assert!(matches!(err, DiskError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("MiB free"), "{err}");
        assert!(!path.exists());
        std::fs::write(&path, b"taken").expect("write");
        let err = create(&path, 64).expect_err("exists");
        assert!(matches!(err, DiskError::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"taken", "kept");
    }

    #[test]
    fn memory_file_systems_are_told_apart() {
        assert!(!in_memory(Path::new("/proc")));
        if Path::new("/dev/shm").is_dir() {
            assert!(in_memory(Path::new("/dev/shm")), "/dev/shm is a tmpfs");
        }
    }

    #[test]
    fn a_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        let mut f = File::create(&src).expect("create");
        f.set_len(64 << 20).expect("size");
        for (off, byte) in [(0u64, 1u8), (10 << 20, 2), ((64 << 20) - 4096, 3)] {
            f.seek(std::io::SeekFrom::Start(off)).expect("seek");
            f.write_all(&vec![byte; 4096]).expect("write");
        }
        drop(f);
        copy(&src, &dst).expect("copy");
        assert_eq!(
            std::fs::read(&src).expect("read a"),
            std::fs::read(&dst).expect("read b")
        );
        let m = std::fs::metadata(&dst).expect("stat");
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 8 << 20,
            "holes filled: {} blocks",
            m.blocks()
        );
        let err = copy(&src, &dst).expect_err("target exists");
        assert!(matches!(err, DiskError::Io { .. }), "{err}");
    }
}
