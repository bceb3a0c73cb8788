//! `ListDir` and `Stat`: entries as the sandbox user sees them; symlinks
//! are described, not followed.

use std::ffi::CStr;
use std::os::fd::AsFd;

use kiln_agent::protocol::files::{Entry, EntryKind, MAX_LIST_ENTRIES};
use kiln_agent::protocol::{write_message, Message, MAX_FRAME_PAYLOAD};

use super::{sys, Ctx, FilesError};

/// Encoded bytes of entries gathered before a `DirEntries` frame goes out
/// (half a frame: the frame limit can never be reached).
const BATCH_BYTES: usize = MAX_FRAME_PAYLOAD as usize / 2;

/// Streams the entries of directory `path` (`.` and `..` left out) in
/// frames of at most [`MAX_LIST_ENTRIES`], then `ListEnd`.
pub fn list(ctx: &mut Ctx<'_>, path: &str) -> Result<(), FilesError> {
    let req = ctx.resolve(path)?;
    let fd = ctx
        .root
        .open_in(req.full(), libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(FilesError::io("open directory", path))?;
    let mut dir = sys::Dir::new(fd).map_err(FilesError::io("open directory", path))?;
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some((name, _)) = dir.next_entry().map_err(FilesError::io("list", path))? {
        let st = match sys::lstat_at(dir.fd(), &name) {
            Ok(st) => st,
            // Removed since readdir saw it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(FilesError::io("stat entry in", path)(e)),
        };
        let entry = entry(&name, &st);
        bytes += entry.encoded_len();
        batch.push(entry);
        if batch.len() >= MAX_LIST_ENTRIES as usize || bytes >= BATCH_BYTES {
            if write_message(ctx.conn, &Message::DirEntries(std::mem::take(&mut batch))).is_err() {
                return Ok(());
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() && write_message(ctx.conn, &Message::DirEntries(batch)).is_err() {
        return Ok(());
    }
    let _ = write_message(ctx.conn, &Message::ListEnd);
    Ok(())
}

/// Describes `path` itself (a symlink is not followed).
pub fn stat(ctx: &Ctx<'_>, path: &str) -> Result<Entry, FilesError> {
    let req = ctx.resolve(path)?;
    let st = match req.split() {
        Ok((parent, name)) => {
            let dir = ctx
                .root
                .open_dir(parent)
                .map_err(FilesError::io("stat", path))?;
            sys::lstat_at(dir.as_fd(), name)
        }
        // The root, or a path ending in `.`/`..`: a directory.
        Err(_) => ctx
            .root
            .open_dir(req.full())
            .and_then(|fd| sys::fstat(fd.as_fd())),
    }
    .map_err(FilesError::io("stat", path))?;
    Ok(entry(req.name().unwrap_or(c"/"), &st))
}

/// Builds an [`Entry`] from `lstat` data.
fn entry(name: &CStr, st: &libc::stat) -> Entry {
    let kind = match sys::file_type(st) {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    Entry {
        name: name.to_string_lossy().into_owned(),
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        mtime_secs: st.st_mtime,
        mtime_nanos: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_from_stat() {
        // SAFETY: all-zero is a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFLNK | 0o777;
        st.st_size = -1;
        st.st_mtime = -5;
        st.st_mtime_nsec = 7;
        let e = entry(c"l\xff", &st);
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.name, "l\u{FFFD}");
        assert_eq!(
            (e.size, e.mode, e.mtime_secs, e.mtime_nanos),
            (0, 0o777, -5, 7)
        );
        st.st_mode = libc::S_IFIFO | 0o4755;
        assert_eq!(entry(c"f", &st).kind, EntryKind::Other);
        assert_eq!(entry(c"f", &st).mode, 0o4755);
    }
}
