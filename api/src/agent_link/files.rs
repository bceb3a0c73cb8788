//! The agent's files API: uploads and downloads streamed with their
//! SHA-256 checked, listings, stat, mkdir, rename, remove.

use std::time::Duration;

use futures_util::StreamExt;
use kiln_agent::async_client::files;
use kiln_agent::client::files::FilesError;
use kiln_agent::protocol::files::{Entry, FileDigest};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{is_socket_timeout, AgentAddr, AgentError, REQUEST_TIMEOUT, TRANSFER_IDLE_TIMEOUT};

/// A failed files call, or an unresponsive guest when the connection timed
/// out.
fn files_error(op: &'static str, path: &str, source: FilesError, idle: Duration) -> AgentError {
    if is_socket_timeout(&source) {
        return AgentError::Unresponsive(idle);
    }
    AgentError::Files {
        op,
        path: path.to_string(),
        source: Box::new(source),
    }
}

impl AgentAddr {
    /// Streams `source` into the guest file `path` (created with `mode`,
    /// parents made, replaced atomically); returns its size and SHA-256.
    pub async fn upload(
        &self,
        path: String,
        mode: Option<u32>,
        source: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<FileDigest, AgentError> {
        let mut conn = self.connect(Some(TRANSFER_IDLE_TIMEOUT)).await?;
        files::upload(&mut conn, &path, mode, source)
            .await
            .map_err(|e| files_error("upload to", &path, e, TRANSFER_IDLE_TIMEOUT))
    }

    /// Streams the guest file `path` into `sink`, checking its SHA-256;
    /// returns what arrived (and matched the agent's digest).
    pub async fn download(
        &self,
        path: String,
        mut sink: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Result<FileDigest, AgentError> {
        let conn = self.connect(Some(TRANSFER_IDLE_TIMEOUT)).await?;
        let fail = |e| files_error("download of", &path, e, TRANSFER_IDLE_TIMEOUT);
        let mut chunks = std::pin::pin!(files::download(conn, &path));
        let (mut size, mut hash) = (0u64, Sha256::new());
        // The stream ends only once the agent's digest matched.
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(fail)?;
            size += chunk.len() as u64;
            hash.update(&chunk);
            sink.write_all(&chunk)
                .await
                .map_err(|e| fail(FilesError::Sink(e)))?;
        }
        // Shut the sink down so its reader sees the end.
        sink.shutdown()
            .await
            .map_err(|e| fail(FilesError::Sink(e)))?;
        Ok(FileDigest {
            size,
            sha256: hash.finalize().into(),
        })
    }

    /// Lists a directory.
    pub async fn list_dir(&self, path: String) -> Result<Vec<Entry>, AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        files::list_dir(&mut conn, &path)
            .await
            .map_err(|e| files_error("list", &path, e, REQUEST_TIMEOUT))
    }

    /// Describes a path (a symlink itself, not its target).
    pub async fn stat(&self, path: String) -> Result<Entry, AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        files::stat(&mut conn, &path)
            .await
            .map_err(|e| files_error("stat", &path, e, REQUEST_TIMEOUT))
    }

    /// Makes a directory (`parents`: and missing parents; an existing
    /// directory is fine then).
    pub async fn mkdir(
        &self,
        path: String,
        parents: bool,
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        files::mkdir(&mut conn, &path, parents, mode)
            .await
            .map_err(|e| files_error("mkdir", &path, e, REQUEST_TIMEOUT))
    }

    /// Moves `from` to `to`.
    pub async fn rename(&self, from: String, to: String) -> Result<(), AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        files::rename(&mut conn, &from, &to)
            .await
            .map_err(|e| files_error("rename", &from, e, REQUEST_TIMEOUT))
    }

    /// Removes a path (`recursive` for a non-empty directory).
    pub async fn remove(&self, path: String, recursive: bool) -> Result<(), AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        files::remove(&mut conn, &path, recursive)
            .await
            .map_err(|e| files_error("remove", &path, e, REQUEST_TIMEOUT))
    }
}
