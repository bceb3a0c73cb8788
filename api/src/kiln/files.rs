//! A sandbox's files: streamed, SHA-256 checked both ways.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::backend::Backend;
use crate::model::{FileEntry, FileWritten};
use crate::{Error, Result};

/// The files of one sandbox. Relative paths start at the sandbox's home;
/// `..` is refused.
#[derive(Clone)]
pub struct Files {
    backend: Arc<dyn Backend>,
    sandbox: String,
}

/// A file being read: its size and SHA-256 first, then its bytes; the
/// stream fails at its end if the bytes do not match them.
pub struct FileStream {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    body: BoxStream<'static, Result<Bytes>>,
    hasher: Option<Sha256>,
    seen: u64,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl FileStream {
    /// Reads the rest into memory.
    pub async fn to_vec(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0).min(1 << 26));
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

impl Stream for FileStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        let _ = hasher;
        match self.body.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let Some(h) = self.hasher.take() else {
                    return Poll::Ready(None);
                };
                let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                if got != self.sha256 || self.seen != self.size {
                    return Poll::Ready(Some(Err(Error::Guest(format!(
                        "download corrupted: got {} bytes with SHA-256 {got}, expected {} bytes with {}",
                        self.seen, self.size, self.sha256
                    )))));
                }
                Poll::Ready(None)
            }
        }
    }
}

impl Files {
    pub(super) fn new(backend: Arc<dyn Backend>, sandbox: String) -> Self {
        Files { backend, sandbox }
    }

    /// Streams a file out.
    pub async fn read(&self, path: &str) -> Result<FileStream> {
        let d = self
            .backend
            .read_file(self.sandbox.clone(), path.to_string())
            .await?;
        Ok(FileStream {
            size: d.size,
            sha256: d.sha256,
            body: d.body,
            hasher: Some(Sha256::new()),
            seen: 0,
        })
    }

    /// Streams `source` into a file (mode 0644, parents made, replaced
    /// atomically).
    pub async fn write(
        &self,
        path: &str,
        source: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<FileWritten> {
        self.write_with(path, None, source, None).await
    }

    /// [`Files::write`] with permission bits, and the SHA-256 the bytes
    /// must have (else nothing is written).
    pub async fn write_with(
        &self,
        path: &str,
        mode: Option<u32>,
        source: impl AsyncRead + Send + Unpin + 'static,
        sha256: Option<String>,
    ) -> Result<FileWritten> {
        self.backend
            .write_file(
                self.sandbox.clone(),
                path.to_string(),
                mode,
                Box::new(source),
                sha256,
            )
            .await
    }

    /// Describes a path (a symlink itself).
    pub async fn stat(&self, path: &str) -> Result<FileEntry> {
        self.backend
            .stat(self.sandbox.clone(), path.to_string())
            .await
    }

    /// Lists a directory, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<FileEntry>> {
        self.backend
            .list_dir(self.sandbox.clone(), path.to_string())
            .await
    }

    /// Makes a directory (`parents`: and missing parents).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        self.backend
            .mkdir(self.sandbox.clone(), path.to_string(), parents)
            .await
    }

    /// Moves `from` to `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.backend
            .rename(self.sandbox.clone(), from.to_string(), to.to_string())
            .await
    }

    /// Removes a path (`recursive` for a non-empty directory).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.backend
            .remove(self.sandbox.clone(), path.to_string(), recursive)
            .await
    }
}
