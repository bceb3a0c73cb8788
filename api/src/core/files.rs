//! Files in a sandbox through the agent's files API: streamed uploads
//! (size-limited, optionally checked against the caller's SHA-256) and
//! downloads (spooled and verified before the first byte goes out, so the
//! SHA-256 can lead the response), list, stat, mkdir, rename, remove.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use kiln_agent::protocol::ErrorCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::sandboxes::check_path;
use super::Core;
use crate::auth::Actor;
use crate::model::{AuditKind, AuditResult, AuditWhat, FileEntry, FileWritten};
use crate::vm_process::VmProcessError;
use crate::{Error, Result};

/// Why the caller's upload body was refused mid-stream.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload's SHA-256 is {got}, not the {expected} the caller announced")]
    Mismatch { expected: String, got: String },
}

/// The caller's upload body: at most `max` bytes, hashed as it passes; at
/// its end the hash must match `expected` (when given), else the upload
/// fails and the agent discards it.
struct CheckedBody {
    inner: Box<dyn AsyncRead + Send + Unpin>,
    seen: u64,
    max: u64,
    hasher: Sha256,
    expected: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AsyncRead for CheckedBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let new = &buf.filled()[before..];
        if new.is_empty() {
            if let Some(expected) = &this.expected {
                // At the end: nothing was added to `buf`.
                let got = hex(&this.hasher.clone().finalize());
                if !got.eq_ignore_ascii_case(expected) {
                    return Poll::Ready(Err(io::Error::other(BodyError::Mismatch {
                        expected: expected.clone(),
                        got,
                    })));
                }
            }
            return Poll::Ready(Ok(()));
        }
        this.seen = this.seen.saturating_add(new.len() as u64);
        if this.seen > this.max {
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::other(BodyError::TooLarge(this.max))));
        }
        this.hasher.update(new);
        Poll::Ready(Ok(()))
    }
}

/// A body error that ended an upload, found in the error chain.
fn body_error(e: &VmProcessError) -> Option<Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // An io::Error hides its payload from `source()`.
        let payload = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(body) = payload
            .and_then(|p| p.downcast_ref::<BodyError>())
            .or_else(|| err.downcast_ref::<BodyError>())
        {
            return Some(match body {
                BodyError::TooLarge(_) => Error::TooLarge(body.to_string()),
                BodyError::Mismatch { .. } => Error::invalid(body.to_string()),
            });
        }
        cur = err.source();
    }
    None
}

/// The API error for a failed agent operation.
pub(super) fn vm_error(e: VmProcessError) -> Error {
    if let Some(b) = body_error(&e) {
        return b;
    }
    let message = e.to_string();
    let code = match &e {
        VmProcessError::Agent(a) => a.agent_code(),
        _ => None,
    };
    match code {
        Some(ErrorCode::NotFound) => Error::NotFound(message),
        Some(ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => Error::PermissionDenied(message),
        Some(ErrorCode::NoSpace) => Error::GuestDiskFull(message),
        Some(ErrorCode::NoSuchProcess) => Error::NotFound(message),
        Some(
            ErrorCode::Exists
            | ErrorCode::NotEmpty
            | ErrorCode::TooManyProcesses
            | ErrorCode::StdinGap
            | ErrorCode::StdinClosed
            | ErrorCode::NotRunning
            | ErrorCode::StillRunning,
        ) => Error::Conflict(message),
        Some(
            ErrorCode::NotADirectory
            | ErrorCode::IsADirectory
            | ErrorCode::BadRequest
            | ErrorCode::SpawnFailed
            | ErrorCode::Mismatch,
        ) => Error::invalid(message),
        _ => Error::Guest(message),
    }
}

/// A verified download: size and SHA-256 known before the first byte.
pub(crate) struct FileRead {
    /// Bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// The content (a spool file already unlinked).
    pub body: tokio::fs::File,
}

impl Core {
    /// `PUT /v1/sandboxes/{id}/files/{path}`.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        body: Box<dyn AsyncRead + Send + Unpin>,
        expected_sha256: Option<String>,
        caller: &Actor,
    ) -> Result<FileWritten> {
        check_path(path)?;
        if let Some(m) = mode {
            if m > 0o777 {
                return Err(Error::out_of_range("mode", u64::from(m), 0, 0o777));
            }
        }
        let (vm, _) = self.touch(id)?;
        let body = CheckedBody {
            inner: body,
            seen: 0,
            max: self.config().limits.max_file_bytes,
            hasher: Sha256::new(),
            expected: expected_sha256,
        };
        let written = vm.process.upload(path, mode, body).await.map_err(vm_error);
        self.touch(id).ok();
        self.audit(
            caller,
            AuditKind::FileWrite,
            Some(id),
            AuditWhat {
                path: Some(path.to_string()),
                bytes: written.as_ref().ok().map(|w| w.size),
                ..AuditWhat::default()
            },
            AuditResult::of(&written),
        );
        let written = written?;
        Ok(FileWritten {
            path: path.to_string(),
            size: written.size,
            sha256: written.sha256_hex(),
        })
    }

    /// `GET /v1/sandboxes/{id}/files/{path}`: downloads into a spool file
    /// (the agent's SHA-256 checked), then hands it out.
    pub async fn read_file(&self, id: &str, path: &str, caller: &Actor) -> Result<FileRead> {
        check_path(path)?;
        let read = self.read_file_inner(id, path).await;
        self.audit(
            caller,
            AuditKind::FileRead,
            Some(id),
            AuditWhat {
                path: Some(path.to_string()),
                bytes: read.as_ref().ok().map(|r| r.size),
                ..AuditWhat::default()
            },
            AuditResult::of(&read),
        );
        read
    }

    async fn read_file_inner(&self, id: &str, path: &str) -> Result<FileRead> {
        let (vm, _) = self.touch(id)?;
        let spool = self.inner.spool_dir.join(super::new_id("dl"));
        let file = tokio::fs::File::create(&spool)
            .await
            .map_err(|e| Error::Internal(format!("spool file: {e}")))?;
        let got = vm.process.download(path, file).await;
        let opened = match got {
            Ok(digest) => tokio::fs::File::open(&spool)
                .await
                .map(|f| (digest, f))
                .map_err(|e| Error::Internal(format!("spool file: {e}"))),
            Err(e) => Err(vm_error(e)),
        };
        // Unlinked at once: the open file is all that is left of it.
        let _ = tokio::fs::remove_file(&spool).await;
        let (digest, body) = opened?;
        self.touch(id).ok();
        Ok(FileRead {
            size: digest.size,
            sha256: digest.sha256_hex(),
            body,
        })
    }

    /// `GET /v1/sandboxes/{id}/fs/list`.
    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<FileEntry>> {
        check_path(path)?;
        let (vm, _) = self.touch(id)?;
        let mut entries: Vec<FileEntry> = vm
            .process
            .list_dir(path)
            .await
            .map_err(vm_error)?
            .into_iter()
            .map(FileEntry::from)
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// `HEAD`-like stat of one path.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileEntry> {
        check_path(path)?;
        let (vm, _) = self.touch(id)?;
        let entry = vm
            .process
            .agent()
            .stat(path.to_string())
            .await
            .map_err(|e| vm_error(e.into()))?;
        Ok(entry.into())
    }

    /// `POST /v1/sandboxes/{id}/fs/mkdir`.
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool, caller: &Actor) -> Result<()> {
        check_path(path)?;
        let (vm, _) = self.touch(id)?;
        let r = vm
            .process
            .agent()
            .mkdir(path.to_string(), parents, None)
            .await
            .map_err(|e| vm_error(e.into()));
        self.audit_path(caller, AuditKind::Mkdir, id, path, None, &r);
        r
    }

    /// `POST /v1/sandboxes/{id}/fs/rename`.
    pub async fn rename(&self, id: &str, from: &str, to: &str, caller: &Actor) -> Result<()> {
        check_path(from)?;
        check_path(to)?;
        let (vm, _) = self.touch(id)?;
        let r = vm
            .process
            .agent()
            .rename(from.to_string(), to.to_string())
            .await
            .map_err(|e| vm_error(e.into()));
        self.audit_path(
            caller,
            AuditKind::Rename,
            id,
            from,
            Some(format!("to {to}")),
            &r,
        );
        r
    }

    /// `DELETE /v1/sandboxes/{id}/files/{path}`.
    pub async fn remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
        caller: &Actor,
    ) -> Result<()> {
        check_path(path)?;
        let (vm, _) = self.touch(id)?;
        let r = vm
            .process
            .agent()
            .remove(path.to_string(), recursive)
            .await
            .map_err(|e| vm_error(e.into()));
        self.audit_path(caller, AuditKind::Remove, id, path, None, &r);
        r
    }

    fn audit_path(
        &self,
        caller: &Actor,
        kind: AuditKind,
        id: &str,
        path: &str,
        detail: Option<String>,
        r: &Result<()>,
    ) {
        let what = AuditWhat {
            path: Some(path.to_string()),
            detail,
            ..AuditWhat::default()
        };
        self.audit(caller, kind, Some(id), what, AuditResult::of(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_process::AgentError;
    use tokio::io::AsyncReadExt;

    fn body(data: &'static [u8], max: u64, expected: Option<&str>) -> CheckedBody {
        CheckedBody {
            inner: Box::new(data),
            seen: 0,
            max,
            hasher: Sha256::new(),
            expected: expected.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn the_body_is_bounded_and_checked_against_the_announced_hash() {
        let sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut out = Vec::new();
        body(b"abc", 3, Some(sha_abc))
            .read_to_end(&mut out)
            .await
            .expect("matches");
        assert_eq!(out, b"abc");
        let err = body(b"abcd", 3, None)
            .read_to_end(&mut Vec::new())
            .await
            .expect_err("too large");
        assert!(err.to_string().contains("larger than 3"), "{err}");
        let err = body(b"abd", 10, Some(sha_abc))
            .read_to_end(&mut Vec::new())
            .await
            .expect_err("mismatch");
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }

    #[test]
    fn agent_codes_map_to_api_errors() {
        let agent = |code| {
            VmProcessError::Agent(AgentError::Agent(kiln_agent::client::ClientError::Agent {
                code,
                message: "m".into(),
            }))
        };
        assert!(matches!(
            vm_error(agent(ErrorCode::NotFound)),
            Error::NotFound(_)
        ));
        assert!(matches!(
            vm_error(agent(ErrorCode::NoSpace)),
            Error::GuestDiskFull(_)
        ));
        assert!(matches!(
            vm_error(agent(ErrorCode::PermissionDenied)),
            Error::PermissionDenied(_)
        ));
        assert!(matches!(
            vm_error(agent(ErrorCode::Exists)),
            Error::Conflict(_)
        ));
        assert!(matches!(
            vm_error(agent(ErrorCode::SpawnFailed)),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            vm_error(VmProcessError::Agent(AgentError::Unresponsive(
                std::time::Duration::from_secs(1)
            ))),
            Error::Guest(_)
        ));
    }
}
