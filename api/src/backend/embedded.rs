//! [`Backend`] on the embedded core, acting for one caller (a unix uid or
//! a token holder).

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;
use tokio_util::io::ReaderStream;

use super::{Backend, CreateOutcome, Download, ExecEvents, Upload};
use crate::auth::Actor;
use crate::core::Core;
use crate::model::{
    AuditFilter, AuditRecord, Event, ExecInfo, ExecSpec, FileEntry, FileWritten, Health, Info,
    PoolInfo, SandboxFilter, SandboxInfo, SandboxPatch, SandboxSpec, StdinWritten, TemplateInfo,
};
use crate::{Error, Result};

/// The core as one caller sees it.
#[derive(Clone)]
pub(crate) struct Embedded {
    pub core: Core,
    /// Who is calling, recorded with each change.
    pub caller: Actor,
}

/// Stored events fetched per round while catching up.
const EVENT_PAGE: u32 = 500;

impl Embedded {
    /// Stored events after `after_seq`, then live ones, without gaps or
    /// repeats.
    fn event_stream(&self, after_seq: u64) -> Result<BoxStream<'static, Result<Event>>> {
        // Subscribe before reading the store: nothing falls between.
        let live = self.core.subscribe_events();
        let core = self.core.clone();
        struct St {
            core: Core,
            live: tokio::sync::broadcast::Receiver<Event>,
            last: u64,
            backlog: std::collections::VecDeque<Event>,
            caught_up: bool,
        }
        let st = St {
            core,
            live,
            last: after_seq,
            backlog: Default::default(),
            caught_up: false,
        };
        Ok(stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.backlog.pop_front() {
                    st.last = e.seq;
                    return Some((Ok(e), st));
                }
                if !st.caught_up {
                    match st.core.events_after(st.last, EVENT_PAGE) {
                        Ok(page) if page.is_empty() => st.caught_up = true,
                        Ok(page) => st.backlog.extend(page),
                        Err(e) => return Some((Err(e), st)),
                    }
                    continue;
                }
                match st.live.recv().await {
                    Ok(e) if e.seq <= st.last => continue,
                    Ok(e) => {
                        st.last = e.seq;
                        return Some((Ok(e), st));
                    }
                    // Fell behind: read the gap from the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        st.caught_up = false;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }
}

fn ok<T: Send + 'static>(v: Result<T>) -> BoxFuture<'static, Result<T>> {
    async move { v }.boxed()
}

impl Backend for Embedded {
    fn health(&self) -> BoxFuture<'_, Result<Health>> {
        ok(Ok(self.core.health()))
    }

    fn info(&self) -> BoxFuture<'_, Result<Info>> {
        ok(Ok(self.core.info()))
    }

    fn templates(&self) -> BoxFuture<'_, Result<Vec<TemplateInfo>>> {
        ok(Ok(self.core.templates()))
    }

    fn delete_template(&self, name: String) -> BoxFuture<'_, Result<()>> {
        async move { self.core.delete_template(&name, &self.caller).await }.boxed()
    }

    fn pools(&self) -> BoxFuture<'_, Result<Vec<PoolInfo>>> {
        ok(Ok(self.core.pools()))
    }

    fn pool(&self, template: String) -> BoxFuture<'_, Result<PoolInfo>> {
        ok(self.core.pool(&template))
    }

    fn set_pool(&self, template: String, target: u32) -> BoxFuture<'_, Result<PoolInfo>> {
        ok(self.core.set_pool(&template, target, &self.caller))
    }

    fn create(
        &self,
        spec: SandboxSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<CreateOutcome>> {
        // A task of its own: a caller that goes away mid-boot must not
        // leave a half-booted VM behind (the sandbox is made anyway; an
        // Idempotency-Key finds it, its idle timeout ends it).
        let (core, caller) = (self.core.clone(), self.caller.clone());
        let task = tokio::spawn(async move { core.create(spec, key, &caller).await });
        async move {
            let c = task
                .await
                .map_err(|e| Error::Internal(format!("create task: {e}")))??;
            Ok(CreateOutcome {
                sandbox: c.sandbox,
                replayed: c.replayed,
                token: c.token,
            })
        }
        .boxed()
    }

    fn get(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        ok(self.core.get(&id))
    }

    fn list(&self, filter: SandboxFilter) -> BoxFuture<'_, Result<Vec<SandboxInfo>>> {
        ok(self.core.list(&filter))
    }

    fn patch(&self, id: String, patch: SandboxPatch) -> BoxFuture<'_, Result<SandboxInfo>> {
        ok(self.core.patch(&id, patch, &self.caller))
    }

    fn keepalive(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        ok(self.core.keepalive(&id))
    }

    fn delete(&self, id: String) -> BoxFuture<'_, Result<SandboxInfo>> {
        // Finishes even if the caller goes away.
        let (core, caller) = (self.core.clone(), self.caller.clone());
        let task = tokio::spawn(async move { core.delete(&id, &caller).await });
        async move {
            task.await
                .map_err(|e| Error::Internal(format!("delete task: {e}")))?
        }
        .boxed()
    }

    fn exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecEvents>> {
        async move {
            let events = self.core.exec(&id, spec, key, &self.caller).await?;
            Ok(events.map(Ok).boxed())
        }
        .boxed()
    }

    fn start_exec(
        &self,
        id: String,
        spec: ExecSpec,
        key: Option<String>,
    ) -> BoxFuture<'_, Result<ExecInfo>> {
        async move {
            let (record, _) = self.core.start_exec(&id, &spec, key, &self.caller).await?;
            self.core.exec_info(&id, &record.id).await
        }
        .boxed()
    }

    fn execs(&self, id: String) -> BoxFuture<'_, Result<Vec<ExecInfo>>> {
        async move { self.core.list_execs(&id).await }.boxed()
    }

    fn exec_info(&self, id: String, exec: String) -> BoxFuture<'_, Result<ExecInfo>> {
        async move { self.core.exec_info(&id, &exec).await }.boxed()
    }

    fn attach(
        &self,
        id: String,
        exec: String,
        after_seq: u64,
        follow: bool,
    ) -> BoxFuture<'_, Result<ExecEvents>> {
        async move {
            let events = self.core.attach(&id, &exec, after_seq, follow).await?;
            Ok(events.map(Ok).boxed())
        }
        .boxed()
    }

    fn write_stdin(
        &self,
        id: String,
        exec: String,
        offset: Option<u64>,
        data: bytes::Bytes,
        close: bool,
    ) -> BoxFuture<'_, Result<StdinWritten>> {
        async move {
            self.core
                .write_stdin(&id, &exec, offset, &data, close, &self.caller)
                .await
        }
        .boxed()
    }

    fn signal(&self, id: String, exec: String, signal: i32) -> BoxFuture<'_, Result<()>> {
        async move {
            self.core
                .signal_exec(&id, &exec, signal, &self.caller)
                .await
        }
        .boxed()
    }

    fn read_file(&self, id: String, path: String) -> BoxFuture<'_, Result<Download>> {
        async move {
            let read = self.core.read_file(&id, &path, &self.caller).await?;
            let body = ReaderStream::new(read.body)
                .map(|chunk| chunk.map_err(|e| Error::Internal(format!("reading the spool: {e}"))));
            Ok(Download {
                size: read.size,
                sha256: read.sha256,
                body: body.boxed(),
            })
        }
        .boxed()
    }

    fn write_file(
        &self,
        id: String,
        path: String,
        mode: Option<u32>,
        body: Upload,
        sha256: Option<String>,
    ) -> BoxFuture<'_, Result<FileWritten>> {
        async move {
            self.core
                .write_file(&id, &path, mode, body, sha256, &self.caller)
                .await
        }
        .boxed()
    }

    fn stat(&self, id: String, path: String) -> BoxFuture<'_, Result<FileEntry>> {
        async move { self.core.stat(&id, &path).await }.boxed()
    }

    fn list_dir(&self, id: String, path: String) -> BoxFuture<'_, Result<Vec<FileEntry>>> {
        async move { self.core.list_dir(&id, &path).await }.boxed()
    }

    fn mkdir(&self, id: String, path: String, parents: bool) -> BoxFuture<'_, Result<()>> {
        async move { self.core.mkdir(&id, &path, parents, &self.caller).await }.boxed()
    }

    fn rename(&self, id: String, from: String, to: String) -> BoxFuture<'_, Result<()>> {
        async move { self.core.rename(&id, &from, &to, &self.caller).await }.boxed()
    }

    fn remove(&self, id: String, path: String, recursive: bool) -> BoxFuture<'_, Result<()>> {
        async move { self.core.remove(&id, &path, recursive, &self.caller).await }.boxed()
    }

    fn events(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<Event>>>> {
        ok(self.event_stream(after_seq))
    }

    fn audit(&self, filter: AuditFilter) -> BoxFuture<'_, Result<Vec<AuditRecord>>> {
        ok(self.core.audit_records(&filter))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move { self.core.shutdown().await }.boxed()
    }
}
