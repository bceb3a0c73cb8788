//! The listener of one sandbox's proxy and the life of one connection:
//! read the head (bounded, with a deadline), check the allowlist, resolve,
//! refuse inside addresses, connect to the checked address, tunnel or
//! forward, report.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::addr::classify;
use super::pump::{pump, Budget};
use super::report::Limiter;
use super::request::{head_end, parse_head, Host, ProxyRequest, MAX_HEAD};
use super::{EgressError, EgressEvent, EgressLog, EgressSettings, EgressUsage, Verdict};

/// A running proxy; dropping it stops the listener and every connection
/// and removes the socket.
pub struct EgressProxy {
    path: PathBuf,
    stop: CancellationToken,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What every connection of one proxy shares.
struct Shared {
    settings: EgressSettings,
    budget: Budget,
    log: EgressLog,
    usage: Option<EgressUsage>,
    limiter: Limiter,
}

impl EgressProxy {
    /// Listens on the unix socket `path` (mode 0600; `owner` makes it that
    /// uid's and gid's, for a jailed VMM that runs as another user) and
    /// serves until dropped, reporting connections to `log` and the bytes
    /// spent to `usage`. Must run inside a tokio runtime.
    pub fn start(
        path: &Path,
        settings: EgressSettings,
        owner: Option<(u32, u32)>,
        log: EgressLog,
        usage: Option<EgressUsage>,
    ) -> Result<Self, EgressError> {
        let err = |source| EgressError::Socket {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        let setup = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| match owner {
                Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
                None => Ok(()),
            });
        if let Err(source) = setup {
            let _ = std::fs::remove_file(path);
            return Err(err(source));
        }
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            budget: Budget::new(settings.used_before, settings.max_bytes),
            settings,
            log,
            usage,
            limiter: Limiter::new(),
        });
        tokio::spawn(accept_loop(listener, shared, stop.clone()));
        Ok(EgressProxy {
            path: path.to_path_buf(),
            stop,
        })
    }

    /// The socket it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(shared.settings.max_connections));
    let lingering = Arc::new(Semaphore::new(LINGERING));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "egress: accept failed");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            let reason = format!(
                "too many connections (at most {})",
                shared.settings.max_connections
            );
            // One small write into an empty socket buffer; never waits.
            let _ = stream.try_write(response(503, &reason).as_bytes());
            // Lingering (so the client reads the 503, not a reset) takes
            // one of a few slots of its own; past those the socket closes.
            if let Ok(permit) = Arc::clone(&lingering).try_acquire_owned() {
                tokio::spawn(async move {
                    linger(stream).await;
                    drop(permit);
                });
            }
            report(&shared, None, Verdict::Denied(reason));
            continue;
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serve(stream, &shared) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Refused connections over the cap that may linger at once.
const LINGERING: usize = 16;

/// How long a refused connection is drained before it closes.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes drained from a refused connection.
const LINGER_BYTES: usize = 64 * 1024;

/// Writes the proxy's own answer and closes the connection.
async fn refuse(mut client: UnixStream, status: u16, reason: &str) {
    let _ = client.write_all(response(status, reason).as_bytes()).await;
    linger(client).await;
}

/// Ends our side, then reads (and drops) what the client still sends, for
/// a bounded time and size: closing a unix socket with unread data makes
/// the client's next read fail with a reset instead of giving it the
/// answer.
async fn linger(mut client: UnixStream) {
    let _ = client.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A proxy's own answer: status line, a one-line reason body, close.
fn response(status: u16, reason: &str) -> String {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

fn report(shared: &Shared, target: Option<String>, verdict: Verdict) {
    let Some(unreported) = shared.limiter.admit() else {
        return;
    };
    let target_s = target.as_deref().unwrap_or("-");
    match &verdict {
        Verdict::Allowed {
            addr,
            sent,
            received,
        } => tracing::info!(
            target = target_s,
            %addr,
            sent,
            received,
            unreported,
            "egress connection ended"
        ),
        Verdict::Denied(reason) => {
            tracing::info!(target = target_s, reason, unreported, "egress denied")
        }
        Verdict::Failed(reason) => {
            tracing::info!(target = target_s, reason, unreported, "egress failed")
        }
    }
    (shared.log)(EgressEvent {
        target,
        verdict,
        unreported,
    });
}

/// A refusal: the status to answer and why.
struct Refused {
    status: u16,
    reason: String,
    /// 502/504: allowed but not served.
    failed: bool,
}

impl Refused {
    fn denied(status: u16, reason: impl Into<String>) -> Self {
        Refused {
            status,
            reason: reason.into(),
            failed: false,
        }
    }

    fn failed(status: u16, reason: impl Into<String>) -> Self {
        Refused {
            status,
            reason: reason.into(),
            failed: true,
        }
    }
}

async fn serve(mut client: UnixStream, shared: &Shared) {
    let s = &shared.settings;
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(s.header_timeout, read_head(&mut client, &mut buf)).await;
    let head_len = match head {
        Ok(Ok(Some(n))) => n,
        // Closed before a request: nothing was asked for.
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => {
            let reason = format!("no request head within {:?}", s.header_timeout);
            refuse(client, 408, &reason).await;
            return report(shared, None, Verdict::Denied(reason));
        }
    };
    let req = match parse_head(&buf[..head_len]) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            refuse(client, 400, &reason).await;
            return report(shared, None, Verdict::Denied(reason));
        }
    };
    let target = format!("{}:{}", req.host, req.port);
    let upstream = match open(&req, shared).await {
        Ok(u) => u,
        Err(r) => {
            refuse(client, r.status, &r.reason).await;
            let verdict = if r.failed {
                Verdict::Failed(r.reason)
            } else {
                Verdict::Denied(r.reason)
            };
            return report(shared, Some(target), verdict);
        }
    };
    let addr = upstream
        .peer_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    tracing::info!(target = %target, %addr, "egress connection allowed");
    let verdict = match tunnel(client, upstream, &req, &buf[head_len..], shared).await {
        Ok((sent, received)) => Verdict::Allowed {
            addr,
            sent,
            received,
        },
        Err(e) => Verdict::Failed(format!("{addr}: {e}")),
    };
    if let Some(usage) = &shared.usage {
        usage(shared.budget.used());
    }
    report(shared, Some(target), verdict);
}

/// Reads until the blank line; `Ok(Some(head length))`, or `Ok(None)` when
/// the client closed first. A head past [`MAX_HEAD`] is handed over whole
/// so the parser answers 400.
async fn read_head(client: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 2048];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            return Ok(Some(from + end));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(buf.len()));
        }
    }
}

/// Checks the request against the allowlist, resolves the name, refuses
/// inside addresses and connects to the first address that passed.
async fn open(req: &ProxyRequest, shared: &Shared) -> Result<TcpStream, Refused> {
    let s = &shared.settings;
    if !shared.budget.left() {
        return Err(Refused::denied(
            403,
            "the sandbox's egress byte budget is spent",
        ));
    }
    let listed = match &req.host {
        Host::Name(n) => s.allowlist.allows_name(n),
        Host::Ip(ip) => s.allowlist.allows_ip(*ip),
    };
    if !listed {
        return Err(Refused::denied(
            403,
            format!("{} is not on the sandbox's egress allowlist", req.host),
        ));
    }
    let addrs: Vec<SocketAddr> = match &req.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, req.port)],
        Host::Name(n) => {
            let lookup = tokio::net::lookup_host((n.as_str(), req.port));
            match tokio::time::timeout(s.connect_timeout, lookup).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => return Err(Refused::failed(502, format!("cannot resolve {n}: {e}"))),
                Err(_) => return Err(Refused::failed(504, format!("resolving {n} timed out"))),
            }
        }
    };
    let mut first_refusal = None;
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match classify(a.ip()) {
            Some(why) if !s.allow_private.iter().any(|net| net.contains(&a.ip())) => {
                first_refusal.get_or_insert((a.ip(), why));
                false
            }
            _ => true,
        })
        .collect();
    if allowed.is_empty() {
        return Err(match first_refusal {
            Some((ip, why)) => Refused::denied(
                403,
                format!("{} resolves to {ip}, a {} address", req.host, why.as_str()),
            ),
            None => Refused::failed(502, format!("{} has no address", req.host)),
        });
    }
    let mut last_error = String::new();
    for addr in allowed {
        match tokio::time::timeout(s.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last_error = format!("cannot connect to {addr}: {e}"),
            Err(_) => last_error = format!("connecting to {addr} timed out"),
        }
    }
    Err(Refused::failed(502, last_error))
}

/// Answers a CONNECT with 200 or sends the rewritten head, passes on what
/// the client sent after its head, then moves bytes both ways.
async fn tunnel(
    mut client: UnixStream,
    mut upstream: TcpStream,
    req: &ProxyRequest,
    early: &[u8],
    shared: &Shared,
) -> Result<(u64, u64), super::pump::PumpError> {
    match &req.forward {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?
        }
        Some(head) => upstream.write_all(head).await?,
    }
    upstream.write_all(early).await?;
    // What went up before the pump counts as sent, and against the budget.
    let before = (req.forward.as_ref().map_or(0, Vec::len) + early.len()) as u64;
    if !shared.budget.take(before) {
        return Err(super::pump::PumpError::Budget);
    }
    let (sent, received) = pump(
        client,
        upstream,
        &shared.budget,
        shared.settings.idle_timeout,
    )
    .await?;
    Ok((sent + before, received))
}
