//! `Remove`, `Mkdir`, `Rename`: directory fd of the parent (resolved in
//! the root) plus the final name, so the final component is never followed
//! out of the root.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use kiln_agent::protocol::files::{Mkdir, DEFAULT_DIR_MODE, MODE_MASK};

use super::root::Root;
use super::{sys, Ctx, FilesError};

/// Deepest directory tree a recursive remove descends (one open fd per
/// level).
const MAX_REMOVE_DEPTH: usize = 128;

/// Removes a file, symlink or (empty, or with `recursive` any) directory.
pub fn remove(ctx: &Ctx<'_>, path: &str, recursive: bool) -> Result<(), FilesError> {
    let req = ctx.resolve(path)?;
    let (parent, name) = req.split().map_err(FilesError::path(path))?;
    let err = FilesError::io("remove", path);
    let dir = ctx
        .root
        .open_dir(parent)
        .map_err(FilesError::io("remove", path))?;
    let st = sys::lstat_at(dir.as_fd(), name).map_err(FilesError::io("remove", path))?;
    if sys::file_type(&st) != libc::S_IFDIR {
        return sys::unlink_at(dir.as_fd(), name, false).map_err(err);
    }
    if !recursive {
        return sys::unlink_at(dir.as_fd(), name, true).map_err(err);
    }
    remove_tree(dir.as_fd(), name, 0, path)
}

fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &CStr,
    depth: usize,
    path: &str,
) -> Result<(), FilesError> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(FilesError::TooDeep(path.to_owned()));
    }
    let fd = sys::open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(FilesError::io("remove", path))?;
    let mut dir = sys::Dir::new(fd).map_err(FilesError::io("remove", path))?;
    let mut subdirs = Vec::new();
    while let Some((entry, d_type)) = dir.next_entry().map_err(FilesError::io("remove", path))? {
        let is_dir = match d_type {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => sys::lstat_at(dir.fd(), &entry)
                .map(|st| sys::file_type(&st) == libc::S_IFDIR)
                .unwrap_or(false),
            _ => false,
        };
        if is_dir {
            subdirs.push(entry);
        } else {
            ignore_gone(sys::unlink_at(dir.fd(), &entry, false))
                .map_err(FilesError::io("remove", path))?;
        }
    }
    for sub in subdirs {
        remove_tree(dir.fd(), &sub, depth + 1, path)?;
    }
    drop(dir);
    ignore_gone(sys::unlink_at(parent, name, true)).map_err(FilesError::io("remove", path))
}

/// Something else removed it first: fine for a remove.
fn ignore_gone(res: io::Result<()>) -> io::Result<()> {
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Makes a directory (`parents`: with missing parents, existing is fine).
pub fn mkdir(ctx: &Ctx<'_>, req: &Mkdir) -> Result<(), FilesError> {
    let path = ctx.resolve(&req.path)?;
    let mode = req.mode.unwrap_or(DEFAULT_DIR_MODE) & MODE_MASK;
    if req.parents {
        return mkdir_all(&ctx.root, path.full(), mode, &req.path);
    }
    let (parent, name) = path.split().map_err(FilesError::path(&req.path))?;
    let dir = ctx
        .root
        .open_dir(parent)
        .map_err(FilesError::io("mkdir", &req.path))?;
    make_one(dir.as_fd(), name, mode).map_err(FilesError::io("mkdir", &req.path))
}

/// `mkdirat` and the exact mode (mkdir applies the umask).
fn make_one(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    sys::mkdir_at(dir, name, mode)?;
    let st = sys::lstat_at(dir, name)?;
    if st.st_mode & 0o7777 != mode {
        sys::chmod_at_nofollow(dir, name, mode)?;
    }
    Ok(())
}

/// `mkdir -p path`: intermediate directories get [`DEFAULT_DIR_MODE`], the
/// last one `mode` (when made here). Each step resolves its prefix from the
/// root again, so symlinks among the components stay inside it.
pub fn mkdir_all(root: &Root, path: &CStr, mode: u32, shown: &str) -> Result<(), FilesError> {
    let err = || FilesError::io("mkdir", shown);
    let text = path
        .to_str()
        .map_err(|_| err()(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let comps: Vec<&str> = text
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut prefix = String::from("/");
    for (i, comp) in comps.iter().enumerate() {
        if *comp != ".." {
            let dir = root.open_dir(&cstr(&prefix)).map_err(err())?;
            let this_mode = if i + 1 == comps.len() {
                mode
            } else {
                DEFAULT_DIR_MODE
            };
            match make_one(dir.as_fd(), &cstr(comp), this_mode) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(err()(e)),
            }
        }
        prefix.push_str(comp);
        prefix.push('/');
    }
    match root.open_dir(&cstr(&prefix)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(FilesError::Exists(shown.to_owned()))
        }
        Err(e) => Err(err()(e)),
    }
}

/// Paths were checked for NUL by `path`.
fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Moves `from` to `to` (rename(2): replaces a file or empty directory).
pub fn rename(ctx: &Ctx<'_>, from: &str, to: &str) -> Result<(), FilesError> {
    let src = ctx.resolve(from)?;
    let dst = ctx.resolve(to)?;
    let (src_parent, src_name) = src.split().map_err(FilesError::path(from))?;
    let (dst_parent, dst_name) = dst.split().map_err(FilesError::path(to))?;
    let src_dir = ctx
        .root
        .open_dir(src_parent)
        .map_err(FilesError::io("rename", from))?;
    let dst_dir = ctx
        .root
        .open_dir(dst_parent)
        .map_err(FilesError::io("rename to", to))?;
    sys::rename_at(src_dir.as_fd(), src_name, dst_dir.as_fd(), dst_name, true)
        .map_err(FilesError::io("rename", from))
}
