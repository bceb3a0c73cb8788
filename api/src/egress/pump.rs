//! Moving a connection's bytes both ways under the sandbox's byte budget
//! and an idle bound shared by both directions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Read buffer per direction.
const BUF: usize = 16 * 1024;

/// Why a pump stopped before both sides closed.
#[derive(Debug, thiserror::Error)]
pub(super) enum PumpError {
    /// The sandbox's byte budget is spent.
    #[error("egress byte budget spent")]
    Budget,
    /// Neither side moved a byte for the idle bound.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A read or write failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The byte budget of one sandbox, shared by its connections.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    /// A budget of `max` bytes of which `used` are spent.
    pub(super) fn new(used: u64, max: u64) -> Self {
        Budget {
            used: AtomicU64::new(used),
            max,
        }
    }

    /// Bytes spent so far (at most the budget: a connection that ran past
    /// it was cut there).
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed).min(self.max)
    }

    /// Whether any byte is left.
    pub(super) fn left(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.max
    }

    /// Takes `n` bytes; false when that goes past the budget.
    pub(super) fn take(&self, n: u64) -> bool {
        self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n) <= self.max
    }
}

/// When either direction last moved a byte, ms after `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Copies `r` to `w` until `r` ends (then shuts `w` down for writing);
/// returns the bytes moved.
async fn one_way<R, W>(
    mut r: R,
    mut w: W,
    budget: &Budget,
    activity: &Activity,
    idle: Duration,
) -> Result<u64, PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut moved = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(read) => read?,
            // The other way may be busy (a download): only both idle ends it.
            Err(_) if activity.idle_for() < idle => continue,
            Err(_) => return Err(PumpError::Idle(idle)),
        };
        if n == 0 {
            // The peer may already be gone; its end is not ours to report.
            let _ = w.shutdown().await;
            return Ok(moved);
        }
        if !budget.take(n as u64) {
            return Err(PumpError::Budget);
        }
        activity.touch();
        w.write_all(&buf[..n]).await?;
        moved += n as u64;
    }
}

/// Moves bytes between the client and the server until both ends close;
/// returns (client -> server, server -> client) bytes.
pub(super) async fn pump<C, S>(
    client: C,
    server: S,
    budget: &Budget,
    idle: Duration,
) -> Result<(u64, u64), PumpError>
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    tokio::try_join!(
        one_way(cr, sw, budget, &activity, idle),
        one_way(sr, cw, budget, &activity, idle),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_are_counted() {
        let (client, mut client_end) = tokio::io::duplex(1024);
        let (server, mut server_end) = tokio::io::duplex(1024);
        let budget = Budget::new(0, 1000);
        let run = pump(client, server, &budget, Duration::from_secs(5));
        let drive = async {
            client_end.write_all(b"hello").await.expect("write");
            client_end.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            let mut buf = [0u8; 5];
            server_end.read_exact(&mut buf).await.expect("read");
            got.extend_from_slice(&buf);
            server_end.write_all(b"world!").await.expect("write");
            server_end.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            client_end.read_to_end(&mut back).await.expect("read");
            (got, back)
        };
        let (moved, (got, back)) = tokio::join!(run, drive);
        assert_eq!(moved.expect("pump"), (5, 6));
        assert_eq!(
            (got.as_slice(), back.as_slice()),
            (&b"hello"[..], &b"world!"[..])
        );
        assert!(budget.left());
    }

    #[tokio::test]
    async fn the_budget_ends_a_connection() {
        let (client, mut client_end) = tokio::io::duplex(1 << 16);
        let (server, _server_end) = tokio::io::duplex(1 << 16);
        let budget = Budget::new(0, 10);
        client_end.write_all(&[7u8; 11]).await.expect("write");
        let r = pump(client, server, &budget, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(PumpError::Budget)), "{r:?}");
        assert!(!budget.left());
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let (client, _c) = tokio::io::duplex(64);
        let (server, _s) = tokio::io::duplex(64);
        let budget = Budget::new(0, 10);
        let r = pump(client, server, &budget, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(PumpError::Idle(_))), "{r:?}");
    }
}
