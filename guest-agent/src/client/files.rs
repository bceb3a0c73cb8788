//! Host side of the files API: upload, download, list, stat, remove,
//! mkdir, rename. One connection per call, like the rest of [`super`].
//!
//! Uploads and downloads stream in [`MAX_CHUNK`] pieces and hash with
//! SHA-256 as they go, so a file of any size costs one chunk of memory.
//! Both ends check the digest: the agent refuses an upload whose bytes do
//! not match the `FileEnd` the host sent (and leaves no file behind), and
//! [`download`] fails if what arrived does not match the agent's `FileEnd`.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::reply::{self, Digester, DownloadCheck, DownloadStep, ListCollector};
use super::{call, next, ClientError};
use crate::protocol::files::{
    Entry, FileDigest, FileRead, FileWrite, ListDir, Mkdir, Remove, Rename, Stat,
};
use crate::protocol::{write_message, Message, MAX_CHUNK};

/// Most entries [`list_dir`] collects before giving up (a bound on host
/// memory whatever the guest sends).
pub const MAX_LISTED_ENTRIES: usize = 1 << 20;

/// Result of an upload: what the agent wrote.
pub type Written = FileDigest;
/// Result of a download: what arrived (and matched the agent's digest).
pub type Downloaded = FileDigest;

/// Why a files call failed.
#[derive(Debug, Error)]
pub enum FilesError {
    /// The exchange with the agent failed, or the agent answered `Error`
    /// (see [`ClientError::Agent`] for its code).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading the upload's source failed; the agent discards the upload.
    #[error("reading the file to upload failed")]
    Source(#[source] io::Error),
    /// Writing the download's sink failed.
    #[error("writing the downloaded file failed")]
    Sink(#[source] io::Error),
    /// The bytes do not match the digest the other side reported.
    #[error("checksum mismatch: expected {} bytes sha256 {}, got {} bytes sha256 {}",
        .expected.size, .expected.sha256_hex(), .got.size, .got.sha256_hex())]
    Mismatch {
        /// What the other side says.
        expected: FileDigest,
        /// What this side counted.
        got: FileDigest,
    },
    /// A listing went over [`MAX_LISTED_ENTRIES`].
    #[error("directory has more than {MAX_LISTED_ENTRIES} entries")]
    TooManyEntries,
}

impl FilesError {
    /// The agent's error code, when the agent refused the request.
    pub fn agent_code(&self) -> Option<crate::protocol::ErrorCode> {
        match self {
            Self::Client(ClientError::Agent { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

/// Uploads `source` to `remote_path` with permission bits `mode`
/// (`None` = 0644), making missing parent directories and replacing an
/// existing file. See [`upload_with`] for other choices.
pub fn upload<S: Read + Write, R: Read>(
    stream: &mut S,
    remote_path: &str,
    mode: Option<u32>,
    source: R,
) -> Result<Written, FilesError> {
    let request = FileWrite {
        path: remote_path.to_owned(),
        mode,
        create_parents: true,
        overwrite: true,
    };
    upload_with(stream, &request, source)
}

/// Uploads `source` as `request` says. The file appears atomically once
/// complete, or not at all.
pub fn upload_with<S: Read + Write, R: Read>(
    stream: &mut S,
    request: &FileWrite,
    mut source: R,
) -> Result<Written, FilesError> {
    let sent = match send_file(stream, request, &mut source) {
        Ok(sent) => sent,
        // The agent refused early (exists, no such directory, disk full)
        // and hung up: its error frame explains the failed write.
        Err(FilesError::Client(ClientError::Protocol(e))) => {
            return Err(match next(stream) {
                Err(agent @ ClientError::Agent { .. }) => agent.into(),
                _ => ClientError::Protocol(e).into(),
            })
        }
        Err(e) => return Err(e),
    };
    reply::written(next(stream)?, sent)
}

fn send_file<S: Write, R: Read>(
    stream: &mut S,
    request: &FileWrite,
    source: &mut R,
) -> Result<FileDigest, FilesError> {
    write_message(stream, &Message::FileWrite(request.clone())).map_err(ClientError::from)?;
    let mut digest = Digester::default();
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Hanging up (by returning) makes the agent drop the upload.
            Err(e) => return Err(FilesError::Source(e)),
        };
        digest.update(&buf[..n]);
        write_message(stream, &Message::FileChunk(buf[..n].to_vec())).map_err(ClientError::from)?;
    }
    let digest = digest.finish();
    write_message(stream, &Message::FileEnd(digest)).map_err(ClientError::from)?;
    Ok(digest)
}

/// Downloads `remote_path` into `sink`, checking size and SHA-256 against
/// the agent's. On error `sink` may hold part of the file.
pub fn download<S: Read + Write, W: Write>(
    stream: &mut S,
    remote_path: &str,
    mut sink: W,
) -> Result<Downloaded, FilesError> {
    let request = FileRead {
        path: remote_path.to_owned(),
    };
    write_message(stream, &Message::FileRead(request)).map_err(ClientError::from)?;
    let mut check = DownloadCheck::default();
    loop {
        match check.step(next(stream)?)? {
            DownloadStep::Chunk(data) => sink.write_all(&data).map_err(FilesError::Sink)?,
            DownloadStep::Done(digest) => {
                sink.flush().map_err(FilesError::Sink)?;
                return Ok(digest);
            }
        }
    }
}

/// Lists the directory `remote_path` (without `.` and `..`, in no
/// particular order).
pub fn list_dir<S: Read + Write>(
    stream: &mut S,
    remote_path: &str,
) -> Result<Vec<Entry>, FilesError> {
    let request = ListDir {
        path: remote_path.to_owned(),
    };
    write_message(stream, &Message::ListDir(request)).map_err(ClientError::from)?;
    let mut listing = ListCollector::default();
    loop {
        if let Some(entries) = listing.step(next(stream)?)? {
            return Ok(entries);
        }
    }
}

/// Describes `remote_path` (a symlink itself, not its target).
pub fn stat<S: Read + Write>(stream: &mut S, remote_path: &str) -> Result<Entry, FilesError> {
    let request = Stat {
        path: remote_path.to_owned(),
    };
    Ok(reply::entry(call(stream, &Message::Stat(request))?)?)
}

/// Removes a file, symlink or directory (`recursive` for a non-empty one).
pub fn remove<S: Read + Write>(
    stream: &mut S,
    remote_path: &str,
    recursive: bool,
) -> Result<(), FilesError> {
    let request = Remove {
        path: remote_path.to_owned(),
        recursive,
    };
    expect_ok(stream, Message::Remove(request))
}

/// Makes a directory with permission bits `mode` (`None` = 0755);
/// `parents` makes missing parents and accepts an existing directory.
pub fn mkdir<S: Read + Write>(
    stream: &mut S,
    remote_path: &str,
    parents: bool,
    mode: Option<u32>,
) -> Result<(), FilesError> {
    let request = Mkdir {
        path: remote_path.to_owned(),
        parents,
        mode,
    };
    expect_ok(stream, Message::Mkdir(request))
}

/// Moves `from` to `to` (replacing a file or empty directory there).
pub fn rename<S: Read + Write>(stream: &mut S, from: &str, to: &str) -> Result<(), FilesError> {
    let request = Rename {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    expect_ok(stream, Message::Rename(request))
}

fn expect_ok<S: Read + Write>(stream: &mut S, request: Message) -> Result<(), FilesError> {
    Ok(reply::ok(call(stream, &request)?)?)
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Scripted;
    use super::*;
    use crate::protocol::{ErrorCode, MessageKind};
    use sha2::{Digest, Sha256};

    fn digest(data: &[u8]) -> FileDigest {
        FileDigest {
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    #[test]
    fn upload_streams_chunks_and_checks_the_reply() {
        let data = vec![9u8; MAX_CHUNK * 2 + 1];
        let mut s = Scripted::new(&[Message::FileWritten(digest(&data))]);
        let written = upload(&mut s, "a", Some(0o600), &data[..]).expect("upload");
        assert_eq!(written, digest(&data));
        let sent = s.sent();
        assert_eq!(sent.len(), 5);
        assert!(
            matches!(&sent[0], Message::FileWrite(w) if w.path == "a" && w.mode == Some(0o600))
        );
        assert_eq!(sent[3], Message::FileChunk(vec![9]));
        assert_eq!(sent[4], Message::FileEnd(digest(&data)));

        let mut s = Scripted::new(&[Message::FileWritten(digest(b"other"))]);
        let err = upload(&mut s, "a", None, &b"data"[..]).expect_err("mismatch");
        assert!(matches!(err, FilesError::Mismatch { .. }), "{err:?}");
    }

    #[test]
    fn download_verifies_the_digest() {
        let mut s = Scripted::new(&[
            Message::FileChunk(b"ab".to_vec()),
            Message::FileChunk(b"c".to_vec()),
            Message::FileEnd(digest(b"abc")),
        ]);
        let mut out = Vec::new();
        assert_eq!(
            download(&mut s, "f", &mut out).expect("download"),
            digest(b"abc")
        );
        assert_eq!(out, b"abc");

        let mut s = Scripted::new(&[
            Message::FileChunk(b"ab".to_vec()),
            Message::FileEnd(digest(b"abc")),
        ]);
        let err = download(&mut s, "f", Vec::new()).expect_err("short");
        assert!(matches!(err, FilesError::Mismatch { .. }), "{err:?}");

        // Cut off before FileEnd.
        let mut s = Scripted::new(&[Message::FileChunk(b"ab".to_vec())]);
        let err = download(&mut s, "f", Vec::new()).expect_err("closed");
        assert!(
            matches!(err, FilesError::Client(ClientError::Closed)),
            "{err:?}"
        );
    }

    #[test]
    fn agent_errors_and_wrong_replies() {
        let mut s = Scripted::new(&[Message::error(ErrorCode::NotFound, "nope")]);
        let err = stat(&mut s, "x").expect_err("not found");
        assert_eq!(err.agent_code(), Some(ErrorCode::NotFound));
        let mut s = Scripted::new(&[Message::ListEnd]);
        let err = remove(&mut s, "x", true).expect_err("wrong reply");
        assert!(matches!(
            err,
            FilesError::Client(ClientError::Unexpected(MessageKind::ListEnd))
        ));
        let mut s = Scripted::new(&[Message::Ok, Message::Ok]);
        mkdir(&mut s, "d", true, None).expect("mkdir");
        rename(&mut s, "a", "b").expect("rename");
        assert_eq!(s.sent().len(), 2);
    }

    #[test]
    fn listing_collects_frames() {
        let e = |n: &str| Entry {
            name: n.into(),
            ..Entry::default()
        };
        let mut s = Scripted::new(&[
            Message::DirEntries(vec![e("a"), e("b")]),
            Message::DirEntries(vec![e("c")]),
            Message::ListEnd,
        ]);
        let names: Vec<_> = list_dir(&mut s, "/")
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
