//! Who is on the other end of the unix socket (SO_PEERCRED).

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

/// The peer's credentials, recorded with each change it makes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peer {
    /// Unix uid.
    pub uid: Option<u32>,
    /// Process id.
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials");
                Peer::default()
            }
        }
    }
}
