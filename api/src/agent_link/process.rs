//! The agent's process table: programs that live in the agent, not in a
//! connection. Start one, list them, attach to a process's output from a
//! sequence number, write its stdin at an offset, signal its group, wait
//! for and collect its exit.

use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use kiln_agent::async_client::{self, AttachEvent};
use kiln_agent::protocol::{ExecRequest, ExitStatus, ProcessInfo, MAX_CHUNK};

use super::{client_error, AgentAddr, AgentError, REQUEST_TIMEOUT};

/// The events of an attach, each bounded by the attach's idle timeout.
pub(crate) type AttachEvents = BoxStream<'static, Result<AttachEvent, AgentError>>;

/// How much longer than the agent's own `Wait` timeout the host waits.
const WAIT_SLACK: Duration = Duration::from_secs(30);

impl AgentAddr {
    /// Runs a short request on a fresh connection bounded by
    /// [`REQUEST_TIMEOUT`].
    async fn request<T>(
        &self,
        op: impl for<'c> FnOnce(
            &'c mut super::Conn,
        ) -> futures_util::future::BoxFuture<
            'c,
            Result<T, kiln_agent::async_client::ClientError>,
        >,
    ) -> Result<T, AgentError> {
        let mut conn = self.connect(Some(REQUEST_TIMEOUT)).await?;
        op(&mut conn)
            .await
            .map_err(|e| client_error(e, Some(REQUEST_TIMEOUT)))
    }

    /// Starts `request` in the agent's process table; returns the agent's
    /// id for it as soon as the program runs.
    pub async fn start(&self, request: ExecRequest) -> Result<u64, AgentError> {
        self.request(|c| Box::pin(async move { async_client::start(c, &request).await }))
            .await
    }

    /// Every process the agent holds, running or finished (not collected).
    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        self.request(|c| Box::pin(async_client::list(c))).await
    }

    /// The output of process `id` after chunk `after_seq`: a gap first when
    /// some of it was evicted, then chunks, then its exit or (without
    /// `follow`, while it runs) `CaughtUp`. Each event may take at most
    /// `idle` (`None`: without bound). Dropping the stream ends only the
    /// attach. The agent's refusal (no such process) is the first item.
    pub async fn attach(
        &self,
        id: u64,
        after_seq: u64,
        follow: bool,
        idle: Option<Duration>,
    ) -> Result<AttachEvents, AgentError> {
        let conn = self.connect(idle).await?;
        Ok(attach_on(conn, id, after_seq, follow, idle))
    }

    /// Waits up to `timeout` (the agent caps it at an hour) for process
    /// `id` to end; `None` when it still runs.
    pub async fn wait(&self, id: u64, timeout: Duration) -> Result<Option<ExitStatus>, AgentError> {
        let idle = Some(timeout.saturating_add(WAIT_SLACK));
        let mut conn = self.connect(idle).await?;
        async_client::wait(&mut conn, id, timeout)
            .await
            .map_err(|e| client_error(e, idle))
    }

    /// Writes `data` as process `id`'s stdin from `offset` on, one chunk
    /// per connection; returns how many stdin bytes the agent has accepted
    /// in total. Bytes below what it already accepted (a retry) are
    /// acknowledged, not written twice; an offset beyond it is refused.
    /// Stops early, with a smaller count, when the program does not read
    /// (the agent waits a few seconds per write): send the rest from there.
    /// Empty `data` at offset 0 asks for the count alone.
    pub async fn write_stdin(&self, id: u64, offset: u64, data: &[u8]) -> Result<u64, AgentError> {
        let end = offset.saturating_add(data.len() as u64);
        let mut accepted = offset;
        loop {
            let from = usize::try_from(accepted - offset).unwrap_or(usize::MAX);
            let piece = data.get(from..).unwrap_or_default();
            let piece = piece[..piece.len().min(MAX_CHUNK)].to_vec();
            let sent_from = accepted;
            let got = self
                .request(|c| {
                    Box::pin(
                        async move { async_client::write_stdin(c, id, sent_from, &piece).await },
                    )
                })
                .await?;
            if got >= end || got <= accepted {
                return Ok(got);
            }
            accepted = got;
        }
    }

    /// Closes process `id`'s stdin (idempotent).
    pub async fn close_stdin(&self, id: u64) -> Result<(), AgentError> {
        self.request(|c| Box::pin(async_client::close_stdin(c, id)))
            .await
    }

    /// Sends `signal` to process `id`'s process group.
    pub async fn signal(&self, id: u64, signal: i32) -> Result<(), AgentError> {
        self.request(|c| Box::pin(async_client::signal(c, id, signal)))
            .await
    }
}

/// [`AgentAddr::attach`] on a connection opened ahead with
/// [`AgentAddr::connect`] and the same `idle`: an exec opens it while its
/// `Start` is on the way, so the attach costs no connection round trip.
pub(crate) fn attach_on(
    conn: super::Conn,
    id: u64,
    after_seq: u64,
    follow: bool,
    idle: Option<Duration>,
) -> AttachEvents {
    async_client::attach(conn, id, after_seq, follow)
        .map(move |e| e.map_err(|e| client_error(e, idle)))
        .boxed()
}
