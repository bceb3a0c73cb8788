//! The backing file of a virtio-blk disk: opened read-only or read-write,
//! sized in whole sectors, locked against conflicting users, read and
//! written with positioned I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{BlkError, ID_BYTES, SECTOR_SIZE};

/// An open backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens `path` read-only or read-write. The disk is the file's size
    /// rounded down to whole sectors (a warning says so when bytes are
    /// dropped). Read-only disks take a shared lock and read-write disks an
    /// exclusive one, so no VM writes a disk another VM uses.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlkError> {
        let open_err = |source| BlkError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(BlkError::NotAFile(path.to_owned()));
        }
        lock(&file, path, read_only)?;
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlkError::Size {
                path: path.to_owned(),
                source,
            })?;
        let sectors = size / SECTOR_SIZE;
        if sectors == 0 {
            return Err(BlkError::TooSmall {
                path: path.to_owned(),
                size,
            });
        }
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                "drive {}: size {size} is not a multiple of {SECTOR_SIZE}; \
                 the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Disk {
            file,
            path: path.to_owned(),
            sectors,
            read_only,
            id: device_id(meta.dev(), meta.ino()),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the disk was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device id string the guest reads with GET_ID (NUL-padded).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads exactly `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at byte `offset`; refused on a read-only disk.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable (fdatasync); a no-op on a read-only disk.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

/// Takes a shared (read-only) or exclusive (read-write) advisory lock.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), BlkError> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock only reads its integer arguments; the fd is open for the
    // duration of the call because `file` is borrowed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Err(BlkError::Locked(path.to_owned()))
    } else {
        Err(BlkError::Lock {
            path: path.to_owned(),
            source: err,
        })
    }
}

/// A stable id from the backing file's device and inode, NUL-padded.
fn device_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let text = format!("kiln{dev:x}-{ino:x}");
    let mut id = [0u8; ID_BYTES];
    let n = text.len().min(ID_BYTES);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;

    /// A fresh file of `size` bytes under a per-test temp dir; filled with
    /// the byte pattern `i as u8` so reads can be checked.
    pub fn temp_file(name: &str, size: usize) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn sizes_rounds_down_and_refuses_tiny_files() {
        let p = temp_file("odd.img", 1024 + 100);
        let d = Disk::open(&p, true).unwrap();
        assert_eq!(d.sectors(), 2);
        assert!(d.read_only());
        assert_eq!(d.path(), p);
        assert!(d.id().starts_with(b"kiln"));
        let p = temp_file("tiny.img", 511);
        assert!(matches!(
            Disk::open(&p, true),
            Err(BlkError::TooSmall { size: 511, .. })
        ));
        let p = temp_file("empty.img", 0);
        assert!(matches!(
            Disk::open(&p, false),
            Err(BlkError::TooSmall { size: 0, .. })
        ));
    }

    #[test]
    fn missing_file_and_directory_are_clear_errors() {
        let e = Disk::open(Path::new("/nonexistent/kiln/disk.img"), true).unwrap_err();
        assert!(matches!(e, BlkError::Open { .. }));
        assert!(e.to_string().contains("/nonexistent/kiln/disk.img"));
        let e = Disk::open(&std::env::temp_dir(), true).unwrap_err();
        assert!(matches!(e, BlkError::NotAFile(_)), "{e}");
    }

    #[test]
    fn read_only_refuses_writes_and_locks_conflict() {
        let p = temp_file("lock.img", 4096);
        let ro = Disk::open(&p, true).unwrap();
        assert!(ro.write_at(&[1], 0).is_err());
        ro.flush().unwrap();
        // Shared locks coexist; an exclusive one does not.
        let ro2 = Disk::open(&p, true).unwrap();
        assert!(matches!(Disk::open(&p, false), Err(BlkError::Locked(_))));
        drop((ro, ro2));
        let rw = Disk::open(&p, false).unwrap();
        assert!(matches!(Disk::open(&p, true), Err(BlkError::Locked(_))));
        rw.write_at(b"kiln", 512).unwrap();
        rw.flush().unwrap();
        let mut buf = [0u8; 4];
        rw.read_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"kiln");
        // Reading past the end is an error, not a short read.
        assert!(rw.read_at(&mut buf, 4094).is_err());
    }

    #[test]
    fn id_is_padded_and_bounded() {
        let id = device_id(u64::MAX, u64::MAX);
        assert_eq!(id.len(), ID_BYTES);
        assert!(id.iter().all(|&b| b != 0));
        let id = device_id(1, 2);
        assert_eq!(&id[..8], b"kiln1-2\0");
    }
}
