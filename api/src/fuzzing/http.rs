//! The daemon's HTTP request layer without a daemon: the real router (gate,
//! routes, extractors, handlers) over an embedded core that has no
//! templates and a launcher that cannot start anything, so no request can
//! boot a VM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request};
use axum::Router;
use tower::ServiceExt;

use crate::config::{Config, LauncherConfig};
use crate::core::launcher::HostAgentLauncher;
use crate::core::Core;
use crate::server::app;
use crate::server::peer::Peer;

/// Most request body bytes the harness's daemon accepts.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Most response body bytes read back.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How long a response body is read before it counts as a stream.
const BODY_WAIT: Duration = Duration::from_millis(20);

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A unix-socket peer: an administrator.
    Socket,
    /// A client of the TCP listener: needs a token.
    Tcp,
}

/// A response: status and as much of the body as came within the wait.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, or `None` when it did not end within the wait (a stream).
    pub body: Option<Vec<u8>>,
}

/// The daemon's router over a core that can't boot anything.
pub struct HttpHarness {
    rt: tokio::runtime::Runtime,
    router: Router,
    state_dir: PathBuf,
}

impl HttpHarness {
    /// A core under a fresh state directory in the temp dir.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let state_dir = std::env::temp_dir().join(format!("kiln-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let launcher = HostAgentLauncher {
            agent: "/nonexistent".into(),
        };
        let config = Config {
            state_dir: state_dir.clone(),
            launcher: LauncherConfig::HostAgent {
                agent: launcher.agent.clone(),
            },
            default_template: "none".into(),
            ..Config::default()
        };
        let core = rt
            .block_on(Core::start_with(config, Arc::new(launcher)))
            .expect("an embedded core with no templates starts");
        let router = app(core, MAX_REQUEST_BYTES);
        HttpHarness {
            rt,
            router,
            state_dir,
        }
    }

    /// Sends one request; `None` when `method`, `uri` or a header is not
    /// valid HTTP (hyper would have refused it before the router).
    pub fn request(
        &self,
        from: Origin,
        method: &[u8],
        uri: &str,
        headers: &[(&str, &[u8])],
        body: Vec<u8>,
    ) -> Option<Answer> {
        let method = Method::from_bytes(method).ok()?;
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::from(body)).ok()?;
        let peer = match from {
            Origin::Socket => Peer::default(),
            Origin::Tcp => Peer {
                tcp: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
                ..Peer::default()
            },
        };
        let router = self.router.clone().layer(MockConnectInfo(peer));
        self.rt.block_on(async move {
            let resp = router.oneshot(req).await.expect("the router is infallible");
            let status = resp.status().as_u16();
            let read = axum::body::to_bytes(resp.into_body(), MAX_RESPONSE_BYTES);
            let body = match tokio::time::timeout(BODY_WAIT, read).await {
                Ok(Ok(bytes)) => Some(bytes.to_vec()),
                Ok(Err(_)) | Err(_) => None,
            };
            Some(Answer { status, body })
        })
    }
}

impl Default for HttpHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HttpHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
