//! The one internal interface behind [`crate::Kiln`]: the embedded core
//! and the HTTP client both implement it, and the HTTP server calls the
//! embedded one, so library, daemon and CLI cannot drift apart.

pub(crate) mod embedded;
pub(crate) mod http;
pub(crate) mod lines;
pub(crate) mod transport;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::io::AsyncRead;

use crate::model::{
    AuditFilter, AuditRecord, Event, ExecEvent, ExecInfo, ExecSpec, FileEntry, FileWritten, Health,
    Info, IssuedToken, PoolInfo, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec,
    StdinWritten, TemplateInfo,
};
use crate::Result;

/// A stream of exec events.
pub(crate) type ExecEvents = BoxStream<'static, Result<ExecEvent>>;

/// An upload's source.
pub(crate) type Upload = Box<dyn AsyncRead + Send + Unpin>;

/// A download: size and SHA-256 announced first, then the bytes.
pub(crate) struct Download {
    pub size: u64,
    pub sha256: String,
    pub body: BoxStream<'static, Result<Bytes>>,
}

/// A create's outcome.
pub(crate) struct CreateOutcome {
    pub sandbox: SandboxInfo,
    /// An idempotent replay of an earlier create.
    pub replayed: bool,
    /// The token the create asked for.
    pub token: Option<IssuedToken>,
}

/// Everything a kiln client can do.
pub(crate) trait Backend: Send + Sync {
    fn health(&self) -> BoxFuture<'_, Result<Health>>;
    fn info(&self) -> BoxFuture<'_, Result<Info>>;
    fn templates(&self) -> BoxFuture<'_, Result<Vec<TemplateInfo>>>;
    fn delete_template(&self, name: String) -> BoxFuture<'_, Result<()>>;
    fn pools(&self) -> BoxFuture<'_, Result<Vec<PoolInfo>>>;
    fn pool(&self, template: String) -> BoxFuture<'_, Result<PoolInfo>>;
    fn set_pool(&self, template: String, target: u32) -> BoxFuture<'_, Result<PoolInfo>>;
    fn create(
        &self,
        spec: SandboxSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<CreateOutcome>>;
    fn get(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>>;
    fn list(&self, filter: SandboxFilter) -> BoxFuture<'_, Result<Vec<SandboxInfo>>>;
    fn patch(&self, id: String, patch: SandboxPatch) -> BoxFuture<'_, Result<SandboxInfo>>;
    fn keepalive(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>>;
    fn delete(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>>;
    fn exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecEvents>>;
    /// Starts an exec and returns at once (`?detach=true`).
    fn start_exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecInfo>>;
    fn execs(&self, id: String) -> BoxFuture<'_, Result<Vec<ExecInfo>>>;
    fn exec_info(&self, id: String, exec: String) -> BoxFuture<'_, Result<ExecInfo>>;
    fn attach(
        &self,
        id: String,
        exec: String,
        after_seq: u64,
        follow: bool,
    ) -> BoxFuture<'_, Result<ExecEvents>>;
    /// Stdin at `offset` (`None`: after what was accepted so far).
    fn write_stdin(
        &self,
        id: String,
        exec: String,
        offset: Option<u64>,
        data: Bytes,
        close: bool,
    ) -> BoxFuture<'_, Result<StdinWritten>>;
    fn signal(&self, id: String, exec: String, signal: i32) -> BoxFuture<'_, Result<()>>;
    fn read_file(&self, id: String, path: String) -> BoxFuture<'_, Result<Download>>;
    fn write_file(
        &self,
        id: String,
        path: String,
        mode: Option<u32>,
        body: Upload,
        sha256: Option<String>,
    ) -> BoxFuture<'_, Result<FileWritten>>;
    fn stat(&self, id: String, path: String) -> BoxFuture<'_, Result<FileEntry>>;
    fn list_dir(&self, id: String, path: String) -> BoxFuture<'_, Result<Vec<FileEntry>>>;
    fn mkdir(&self, id: String, path: String, parents: bool) -> BoxFuture<'_, Result<()>>;
    fn rename(&self, id: String, from: String, to: String) -> BoxFuture<'_, Result<()>>;
    fn remove(&self, id: String, path: String, recursive: bool) -> BoxFuture<'_, Result<()>>;
    fn events(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<Event>>>>;
    /// Audit records (`GET /v1/audit`).
    fn audit(&self, filter: AuditFilter) -> BoxFuture<'_, Result<Vec<AuditRecord>>>;
    /// Stops an embedded core (drain); nothing for a remote daemon.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
