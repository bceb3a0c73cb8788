//! Sandboxes: create, find, list, and one sandbox's operations.

use std::sync::Arc;

use super::exec::{Exec, ExecBuilder, ExecControl};
use super::files::Files;
use crate::backend::Backend;
use crate::model::{ExecInfo, IssuedToken, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec};
use crate::Result;

/// The sandboxes of a [`super::Kiln`].
#[derive(Clone)]
pub struct Sandboxes {
    backend: Arc<dyn Backend>,
}

impl Sandboxes {
    pub(super) fn new(backend: Arc<dyn Backend>) -> Self {
        Sandboxes { backend }
    }

    /// Creates a sandbox; returns once it is ready.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox> {
        self.create_idempotent(spec, None).await
    }

    /// Creates a sandbox with an idempotency key: repeating the call with
    /// the same key and spec returns the same sandbox.
    pub async fn create_idempotent(
        &self,
        spec: SandboxSpec,
        key: Option<String>,
    ) -> Result<Sandbox> {
        let created = self.backend.create(spec, key).await?;
        Ok(Sandbox {
            backend: Arc::clone(&self.backend),
            info: created.sandbox,
            token: created.token,
        })
    }

    /// A live sandbox (410 `sandbox_expired` for an ended one).
    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        let info = self.backend.get(id.to_string()).await?;
        Ok(Sandbox {
            backend: Arc::clone(&self.backend),
            info,
            token: None,
        })
    }

    /// Sandboxes matching `filter` (by default the live ones).
    pub async fn list(&self, filter: SandboxFilter) -> Result<Vec<SandboxInfo>> {
        self.backend.list(filter).await
    }
}

/// One sandbox.
#[derive(Clone)]
pub struct Sandbox {
    backend: Arc<dyn Backend>,
    info: SandboxInfo,
    token: Option<IssuedToken>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("info", &self.info).finish()
    }
}

impl Sandbox {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The token issued with the create, when the spec asked for one
    /// (`SandboxSpec::token`); it is not stored anywhere else.
    pub fn token(&self) -> Option<&IssuedToken> {
        self.token.as_ref()
    }

    /// What was known when this handle was made or last refreshed.
    pub fn cached_info(&self) -> &SandboxInfo {
        &self.info
    }

    /// The current state (counts as activity).
    pub async fn info(&mut self) -> Result<SandboxInfo> {
        self.info = self.backend.get(self.info.id.clone()).await?;
        Ok(self.info.clone())
    }

    /// Counts as activity: pushes the idle deadline back.
    pub async fn keepalive(&mut self) -> Result<SandboxInfo> {
        self.info = self.backend.keepalive(self.info.id.clone()).await?;
        Ok(self.info.clone())
    }

    /// Changes labels and timeouts.
    pub async fn patch(&mut self, patch: SandboxPatch) -> Result<SandboxInfo> {
        self.info = self.backend.patch(self.info.id.clone(), patch).await?;
        Ok(self.info.clone())
    }

    /// Deletes it: the VM is killed and its files removed; returns the
    /// tombstone.
    pub async fn delete(self) -> Result<SandboxInfo> {
        self.backend.delete(self.info.id.clone()).await
    }

    /// Prepares a command: `sandbox.exec(["python3", "-c", "print(1)"])`.
    pub fn exec<I, S>(&self, argv: I) -> ExecBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecBuilder::new(
            Arc::clone(&self.backend),
            self.info.id.clone(),
            argv.into_iter().map(Into::into).collect(),
        )
    }

    /// Its execs, newest first (running, exited, and ones the agent no
    /// longer holds).
    pub async fn processes(&self) -> Result<Vec<ExecInfo>> {
        self.backend.execs(self.info.id.clone()).await
    }

    /// Follows exec `exec_id`: its output after chunk `after_seq` (0: from
    /// the start; a `gap` event first for output already evicted), then
    /// its exit. Dropping the stream leaves the program running.
    pub async fn attach(&self, exec_id: &str, after_seq: u64) -> Result<Exec> {
        self.attach_with(exec_id, after_seq, true).await
    }

    /// Exec `exec_id`'s output after chunk `after_seq` as far as it goes
    /// now: the stream ends with `CaughtUp` while the program runs.
    pub async fn output_since(&self, exec_id: &str, after_seq: u64) -> Result<Exec> {
        self.attach_with(exec_id, after_seq, false).await
    }

    async fn attach_with(&self, exec_id: &str, after_seq: u64, follow: bool) -> Result<Exec> {
        let events = self
            .backend
            .attach(self.info.id.clone(), exec_id.to_string(), after_seq, follow)
            .await?;
        Ok(Exec::new(events, self.exec_control(exec_id)))
    }

    /// Signals and stdin of exec `exec_id`.
    pub fn exec_control(&self, exec_id: &str) -> ExecControl {
        ExecControl::new(
            Arc::clone(&self.backend),
            self.info.id.clone(),
            exec_id.to_string(),
        )
    }

    /// Its files.
    pub fn files(&self) -> Files {
        Files::new(Arc::clone(&self.backend), self.info.id.clone())
    }
}
