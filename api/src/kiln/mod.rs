//! The library's way in: [`Kiln`], with the same types and methods whether
//! the pools run in this process ([`Kiln::embedded`]) or in a `kiln serve`
//! daemon ([`Kiln::connect_unix`]).

mod exec;
mod files;
mod sandbox;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::stream::BoxStream;

use crate::auth::Actor;
use crate::backend::embedded::Embedded;
use crate::backend::http::HttpBackend;
use crate::backend::transport::Transport;
use crate::backend::Backend;
use crate::config::Config;
use crate::core::launcher::Launcher;
use crate::core::Core;
use crate::model::{AuditFilter, AuditRecord, Event, Health, Info, PoolInfo, TemplateInfo};
use crate::Result;

pub(crate) use exec::collect_output;
pub use exec::{Exec, ExecBuilder, ExecControl, ExecOutput};
pub use files::{FileStream, Files};
pub use sandbox::{Sandbox, Sandboxes};

/// A kiln: sandboxes from warm pools of microVMs.
#[derive(Clone)]
pub struct Kiln {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Kiln {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kiln").finish_non_exhaustive()
    }
}

impl Kiln {
    /// Runs the core in this process: takes the state dir's lock, re-adopts
    /// VMs an earlier owner left, starts the pools. Call
    /// [`Kiln::shutdown`] to drain and stop every VM.
    pub async fn embedded(config: Config) -> Result<Kiln> {
        let core = Core::start(config).await?;
        Ok(Self::from_core(core))
    }

    /// [`Kiln::embedded`] with a launcher of the caller's (e.g.
    /// [`HostAgentLauncher`](crate::launcher::HostAgentLauncher)).
    pub async fn embedded_with(config: Config, launcher: Arc<dyn Launcher>) -> Result<Kiln> {
        let core = Core::start_with(config, launcher).await?;
        Ok(Self::from_core(core))
    }

    fn from_core(core: Core) -> Kiln {
        let caller = Actor::Uid(Some(rustix::process::getuid().as_raw()));
        Kiln {
            backend: Arc::new(Embedded { core, caller }),
        }
    }

    /// Talks to the `kiln serve` daemon on the unix socket `path`; fails
    /// with `unavailable` when it does not answer.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Kiln> {
        Self::connect(Transport::Unix(path.as_ref().to_path_buf())).await
    }

    /// Talks to a daemon's TCP listener (`kiln serve --listen`) as the
    /// holder of a sandbox token: only that sandbox (`sandboxes().get(id)`)
    /// and the operations the token allows answer; everything else is
    /// `unauthenticated` or `permission_denied`.
    pub async fn connect_tcp(addr: SocketAddr, token: &str) -> Result<Kiln> {
        Self::connect(Transport::tcp(addr, token)?).await
    }

    async fn connect(transport: Transport) -> Result<Kiln> {
        let kiln = Kiln {
            backend: Arc::new(HttpBackend::new(transport)),
        };
        kiln.health().await?;
        Ok(kiln)
    }

    /// Sandboxes.
    pub fn sandboxes(&self) -> Sandboxes {
        Sandboxes::new(Arc::clone(&self.backend))
    }

    /// Liveness (`ok`, or `draining`).
    pub async fn health(&self) -> Result<Health> {
        self.backend.health().await
    }

    /// Version, limits and allowed ranges.
    pub async fn info(&self) -> Result<Info> {
        self.backend.info().await
    }

    /// Templates.
    pub async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        self.backend.templates().await
    }

    /// Removes a registry template nothing uses (else
    /// [`crate::Error::TemplateInUse`]).
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        self.backend.delete_template(name.to_string()).await
    }

    /// Every pool.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>> {
        self.backend.pools().await
    }

    /// One template's pool.
    pub async fn pool(&self, template: &str) -> Result<PoolInfo> {
        self.backend.pool(template.to_string()).await
    }

    /// Sets how many VMs a pool keeps ready (0: pooling off).
    pub async fn set_pool_target(&self, template: &str, target: u32) -> Result<PoolInfo> {
        self.backend.set_pool(template.to_string(), target).await
    }

    /// Lifecycle events after `after_seq` (0: from the oldest kept), then
    /// live ones, without end.
    pub async fn events(&self, after_seq: u64) -> Result<BoxStream<'static, Result<Event>>> {
        self.backend.events(after_seq).await
    }

    /// The audit trail: the newest records that pass `filter`, oldest
    /// first (who did what to which sandbox, and how it went).
    pub async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
        self.backend.audit(filter).await
    }

    /// Embedded: drains (no new work, running execs get the drain timeout)
    /// and stops every VM. Connected: nothing (the daemon stays).
    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }
}
