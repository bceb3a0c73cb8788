//! The files API: write, read, list, stat, remove, mkdir, rename.
//!
//! Every request path is resolved inside the files root with
//! `openat2(RESOLVE_IN_ROOT)` (see `root`); relative paths start at the
//! sandbox home. In the guest the root is the sandbox root and every file
//! system call runs as the sandbox user (uid/gid 1000, see `identity`), so
//! the host can do exactly what sandboxed programs can. On the host,
//! `--files-root DIR` confines the API to `DIR` with the agent's own
//! credentials (tests); `--sandbox-root DIR` uses `DIR` as the sandbox
//! user, like exec. An agent on the host with neither refuses file
//! requests, so a test can never touch the host's real root.

mod identity;
mod list;
mod ops;
mod path;
mod read;
mod root;
mod sys;
mod write;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use kiln_agent::protocol::{write_message, ErrorCode, Message, MessageKind, ProtocolError};

use super::conn::Conn;
use super::klog::{chain, klog};
use super::sandbox::{SANDBOX_HOME, SANDBOX_UID};
pub use identity::Identity;
use path::{PathError, ReqPath};
use root::Root;

/// Where and as whom file requests run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The directory request paths are confined to.
    pub root: PathBuf,
    /// Switch to this identity for file system calls; `None` keeps the
    /// agent's.
    pub identity: Option<Identity>,
}

impl Config {
    /// The sandbox root, as the sandbox user.
    pub fn sandbox(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            identity: Some(Identity {
                uid: SANDBOX_UID,
                gid: SANDBOX_UID,
            }),
        }
    }

    /// `--files-root DIR`: confined to `dir`, as the agent.
    pub fn host_dir(dir: &Path) -> Self {
        Self {
            root: dir.to_owned(),
            identity: None,
        }
    }
}

/// Why a file request failed.
#[derive(Debug, Error)]
pub enum FilesError {
    /// The agent serves no files root (host agent without `--files-root`).
    #[error("files API disabled: the agent has no files root (start it with --files-root DIR)")]
    Disabled,
    /// The request's path is unusable.
    #[error("invalid path {path:?}")]
    Path {
        /// The path as requested.
        path: String,
        /// Why.
        #[source]
        source: PathError,
    },
    /// A system call failed.
    #[error("{op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path as requested.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A write without `overwrite` found the path taken.
    #[error("{0:?} exists")]
    Exists(String),
    /// A file operation found a directory.
    #[error("{0:?} is a directory")]
    IsDir(String),
    /// A read found a fifo, socket or device.
    #[error("{0:?} is not a regular file")]
    NotRegular(String),
    /// A recursive remove went deeper than the agent allows.
    #[error("directory tree under {0:?} is too deep")]
    TooDeep(String),
    /// The upload's bytes differ from what the host says it sent.
    #[error("upload of {path:?} does not match: host sent {expected}, agent got {got}")]
    Mismatch {
        /// The path as requested.
        path: String,
        /// The host's `FileEnd`.
        expected: String,
        /// What the agent received.
        got: String,
    },
    /// The host sent something other than chunks and `FileEnd`.
    #[error("unexpected {0:?} during an upload")]
    Unexpected(MessageKind),
    /// Reading the upload from the host failed (hang-up, timeout, bad
    /// frame).
    #[error("upload interrupted")]
    Upload(#[source] ProtocolError),
    /// The agent could not act as the sandbox user.
    #[error("cannot act as the sandbox user")]
    Identity(#[source] io::Error),
    /// The files root could not be opened.
    #[error("cannot open the files root {}", .0.display())]
    Root(PathBuf, #[source] io::Error),
}

impl FilesError {
    fn io(op: &'static str, path: &str) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { op, path, source }
    }

    fn path(path: &str) -> impl FnOnce(PathError) -> Self + '_ {
        move |source| Self::Path {
            path: path.to_owned(),
            source,
        }
    }

    /// The error code sent to the host.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Disabled | Self::Path { .. } | Self::NotRegular(_) | Self::TooDeep(_) => {
                ErrorCode::BadRequest
            }
            Self::Unexpected(_) => ErrorCode::BadRequest,
            Self::Io { source, .. } => errno_code(source),
            Self::Exists(_) => ErrorCode::Exists,
            Self::IsDir(_) => ErrorCode::IsADirectory,
            Self::Mismatch { .. } => ErrorCode::Mismatch,
            Self::Upload(e) => e.code(),
            Self::Identity(_) | Self::Root(..) => ErrorCode::Internal,
        }
    }
}

/// Maps an errno to the protocol's error class.
pub fn errno_code(err: &io::Error) -> ErrorCode {
    match err.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EACCES | libc::EPERM) => ErrorCode::PermissionDenied,
        Some(libc::ENOSPC | libc::EDQUOT) => ErrorCode::NoSpace,
        Some(libc::EEXIST) => ErrorCode::Exists,
        Some(libc::ENOTDIR) => ErrorCode::NotADirectory,
        Some(libc::EISDIR) => ErrorCode::IsADirectory,
        Some(libc::ENOTEMPTY) => ErrorCode::NotEmpty,
        Some(libc::EROFS) => ErrorCode::ReadOnly,
        Some(libc::ENAMETOOLONG | libc::EINVAL | libc::ELOOP | libc::EXDEV | libc::EBUSY) => {
            ErrorCode::BadRequest
        }
        _ => ErrorCode::Io,
    }
}

/// Context shared by the handlers of one request.
struct Ctx<'a> {
    root: Root,
    conn: &'a mut Conn,
}

impl Ctx<'_> {
    fn resolve(&self, path: &str) -> Result<ReqPath, FilesError> {
        ReqPath::parse(path, SANDBOX_HOME).map_err(FilesError::path(path))
    }
}

/// Serves one file request on `conn` (the request frame was read already);
/// ends with the operation's final frame or an `Error`.
pub fn serve(conn: &mut Conn, request: Message, config: Option<&Config>) {
    if let Err(err) = run(conn, request, config) {
        // On the console too: a transfer that dies midway leaves the host
        // only a closed stream.
        klog!("files: {}", chain(&err));
        let _ = write_message(conn, &Message::error(err.code(), chain(&err)));
    }
}

fn run(conn: &mut Conn, request: Message, config: Option<&Config>) -> Result<(), FilesError> {
    let config = config.ok_or(FilesError::Disabled)?;
    // The root is opened as the agent; lookups inside it run as the user.
    let root = Root::open(&config.root).map_err(|e| FilesError::Root(config.root.clone(), e))?;
    let _as_user = config
        .identity
        .map(identity::become_user)
        .transpose()
        .map_err(FilesError::Identity)?;
    let mut ctx = Ctx { root, conn };
    let reply = match request {
        Message::FileWrite(req) => Message::FileWritten(write::run(&mut ctx, &req)?),
        Message::FileRead(req) => return read::run(&mut ctx, &req.path),
        Message::ListDir(req) => return list::list(&mut ctx, &req.path),
        Message::Stat(req) => Message::Entry(list::stat(&ctx, &req.path)?),
        Message::Remove(req) => {
            ops::remove(&ctx, &req.path, req.recursive)?;
            Message::Ok
        }
        Message::Mkdir(req) => {
            ops::mkdir(&ctx, &req)?;
            Message::Ok
        }
        Message::Rename(req) => {
            ops::rename(&ctx, &req.from, &req.to)?;
            Message::Ok
        }
        other => return Err(FilesError::Unexpected(other.kind())),
    };
    let _ = write_message(ctx.conn, &reply);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(errno_code(&e(libc::ENOENT)), ErrorCode::NotFound);
        assert_eq!(errno_code(&e(libc::EACCES)), ErrorCode::PermissionDenied);
        assert_eq!(errno_code(&e(libc::ENOSPC)), ErrorCode::NoSpace);
        assert_eq!(errno_code(&e(libc::EEXIST)), ErrorCode::Exists);
        assert_eq!(errno_code(&e(libc::ENOTDIR)), ErrorCode::NotADirectory);
        assert_eq!(errno_code(&e(libc::EISDIR)), ErrorCode::IsADirectory);
        assert_eq!(errno_code(&e(libc::ENOTEMPTY)), ErrorCode::NotEmpty);
        assert_eq!(errno_code(&e(libc::EROFS)), ErrorCode::ReadOnly);
        assert_eq!(errno_code(&e(libc::EIO)), ErrorCode::Io);
        assert_eq!(errno_code(&io::Error::other("x")), ErrorCode::Io);
    }

    #[test]
    fn error_codes_survive_the_wire() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::NoSpace,
            ErrorCode::Exists,
            ErrorCode::NotADirectory,
            ErrorCode::IsADirectory,
            ErrorCode::NotEmpty,
            ErrorCode::ReadOnly,
            ErrorCode::Mismatch,
            ErrorCode::Io,
        ] {
            assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
            assert!(!matches!(code, ErrorCode::Other(_)));
        }
    }

    #[test]
    fn disabled_without_a_root() {
        assert_eq!(FilesError::Disabled.code(), ErrorCode::BadRequest);
    }
}
