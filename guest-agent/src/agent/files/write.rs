//! `FileWrite`: an atomic upload.
//!
//! The bytes go to a fresh temp file (`O_EXCL`, mode 0600) in the target's
//! directory; only after the host's `FileEnd` matches what arrived, the
//! mode is set and the data fsynced, the temp file is renamed over the
//! target (`RENAME_NOREPLACE` unless `overwrite`). Any failure (disk full,
//! host hang-up, timeout, bad frame, mismatch) unlinks the temp file, so a
//! half file is never in place and never reported as written. The file is
//! streamed: memory use is one chunk whatever the size.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use sha2::{Digest, Sha256};

use kiln_agent::protocol::files::{
    FileDigest, FileWrite, DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, MODE_MASK,
};
use kiln_agent::protocol::{read_message, Message};

use super::ops::mkdir_all;
use super::{sys, Ctx, FilesError};

/// Longest wait for the next upload frame.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a unique temp name.
const TEMP_ATTEMPTS: usize = 8;

/// Receives the upload and moves it into place.
pub fn run(ctx: &mut Ctx<'_>, req: &FileWrite) -> Result<FileDigest, FilesError> {
    let path = ctx.resolve(&req.path)?;
    let (parent_path, name) = path.split().map_err(FilesError::path(&req.path))?;
    if req.create_parents {
        mkdir_all(&ctx.root, parent_path, DEFAULT_DIR_MODE, &req.path)?;
    }
    let parent = ctx
        .root
        .open_dir(parent_path)
        .map_err(FilesError::io("open directory of", &req.path))?;
    // Fail before the host sends megabytes.
    match sys::lstat_at(parent.as_fd(), name) {
        Ok(st) if sys::file_type(&st) == libc::S_IFDIR => {
            return Err(FilesError::IsDir(req.path.clone()))
        }
        Ok(_) if !req.overwrite => return Err(FilesError::Exists(req.path.clone())),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(FilesError::io("stat", &req.path)(e)),
    }

    let mut temp = TempFile::create(parent.as_fd(), &req.path)?;
    let got = receive(ctx, &mut temp, &req.path)?;
    let mode = req.mode.unwrap_or(DEFAULT_FILE_MODE) & MODE_MASK;
    let file = temp.file.as_fd();
    sys::fchmod(file, mode).map_err(FilesError::io("chmod", &req.path))?;
    temp.sync(&req.path)?;
    sys::rename_at(
        parent.as_fd(),
        &temp.name,
        parent.as_fd(),
        name,
        req.overwrite,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => FilesError::Exists(req.path.clone()),
        _ => FilesError::io("move into place", &req.path)(e),
    })?;
    temp.committed = true;
    Ok(got)
}

/// Copies chunks into the temp file until the host's `FileEnd`, and checks
/// it.
fn receive(
    ctx: &mut Ctx<'_>,
    temp: &mut TempFile<'_>,
    path: &str,
) -> Result<FileDigest, FilesError> {
    let _ = ctx.conn.set_read_timeout(Some(CHUNK_TIMEOUT));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut file = std::fs::File::from(
        temp.file
            .try_clone()
            .map_err(FilesError::io("write", path))?,
    );
    loop {
        match read_message(ctx.conn).map_err(FilesError::Upload)? {
            Message::FileChunk(data) => {
                file.write_all(&data)
                    .map_err(FilesError::io("write", path))?;
                hasher.update(&data);
                size = size.saturating_add(data.len() as u64);
            }
            Message::FileEnd(expected) => {
                let got = FileDigest {
                    size,
                    sha256: hasher.finalize().into(),
                };
                if got != expected {
                    return Err(FilesError::Mismatch {
                        path: path.to_owned(),
                        expected: describe(&expected),
                        got: describe(&got),
                    });
                }
                return Ok(got);
            }
            other => return Err(FilesError::Unexpected(other.kind())),
        }
    }
}

fn describe(d: &FileDigest) -> String {
    format!("{} bytes sha256 {}", d.size, d.sha256_hex())
}

/// The upload's temp file; unlinked on drop unless committed.
struct TempFile<'d> {
    dir: BorrowedFd<'d>,
    name: CString,
    file: OwnedFd,
    committed: bool,
}

impl<'d> TempFile<'d> {
    fn create(dir: BorrowedFd<'d>, path: &str) -> Result<Self, FilesError> {
        let mut last = None;
        for _ in 0..TEMP_ATTEMPTS {
            let name = temp_name();
            match sys::open_at(
                dir,
                &name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            ) {
                Ok(file) => {
                    return Ok(Self {
                        dir,
                        name,
                        file,
                        committed: false,
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = Some(e),
                Err(e) => return Err(FilesError::io("create temp file for", path)(e)),
            }
        }
        Err(FilesError::io("create temp file for", path)(
            last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST)),
        ))
    }

    fn sync(&self, path: &str) -> Result<(), FilesError> {
        // SAFETY: plain syscall on an open fd.
        if unsafe { libc::fsync(std::os::fd::AsRawFd::as_raw_fd(&self.file)) } == -1 {
            return Err(FilesError::io("fsync", path)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = sys::unlink_at(self.dir, &self.name, false);
        }
    }
}

/// `.kiln-upload-<16 hex>`: random, so a sandboxed program cannot predict
/// (and pre-create) it; `O_EXCL` handles the rest.
fn temp_name() -> CString {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    let mut v = u64::from_le_bytes(bytes);
    if n != 8 {
        // No entropy yet (early boot): time and a counter still make
        // collisions unlikely, and O_EXCL makes them harmless.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        v ^= nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    }
    CString::new(format!(".kiln-upload-{v:016x}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique() {
        let a = temp_name();
        let b = temp_name();
        assert_ne!(a, b);
        assert!(a.to_bytes().starts_with(b".kiln-upload-"));
        assert_eq!(a.to_bytes().len(), ".kiln-upload-".len() + 16);
    }
}
