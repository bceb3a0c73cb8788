//! `FileRead`: stream a regular file to the host in chunks, then its size
//! and SHA-256. Memory use is one chunk whatever the size.

use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;

use sha2::{Digest, Sha256};

use kiln_agent::protocol::files::FileDigest;
use kiln_agent::protocol::{write_message, Message, MAX_CHUNK};

use super::{sys, Ctx, FilesError};
use crate::agent::klog::{chain, klog};

/// Sends `path`; a write failure means the host left, which ends the
/// request quietly.
pub fn run(ctx: &mut Ctx<'_>, path: &str) -> Result<(), FilesError> {
    let req = ctx.resolve(path)?;
    // O_NONBLOCK: opening a fifo must not hang the handler; it is refused
    // right after, like any non-regular file (devices would never end).
    let fd = ctx
        .root
        .open_in(
            req.full(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )
        .map_err(FilesError::io("open", path))?;
    let st = sys::fstat(fd.as_fd()).map_err(FilesError::io("stat", path))?;
    match sys::file_type(&st) {
        libc::S_IFREG => {}
        libc::S_IFDIR => return Err(FilesError::IsDir(path.to_owned())),
        _ => return Err(FilesError::NotRegular(path.to_owned())),
    }
    let mut file = std::fs::File::from(fd);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(FilesError::io("read", path)(e)),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        size = size.saturating_add(n as u64);
        if let Err(e) = write_message(ctx.conn, &Message::FileChunk(chunk.to_vec())) {
            // The host may have left; or the connection broke midway.
            klog!(
                "files: sending {path} stopped after {size} bytes: {}",
                chain(&e)
            );
            return Ok(());
        }
    }
    let end = FileDigest {
        size,
        sha256: hasher.finalize().into(),
    };
    let _ = write_message(ctx.conn, &Message::FileEnd(end));
    Ok(())
}
