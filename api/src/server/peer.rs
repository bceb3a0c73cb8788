//! Who is on the other end: a unix-socket peer (SO_PEERCRED) or a TCP
//! client (its address; who it is comes from its token).

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};

/// The peer of a connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peer {
    /// Unix uid (unix socket).
    pub uid: Option<u32>,
    /// Process id (unix socket).
    pub pid: Option<i32>,
    /// The client's address on the TCP listener; `None` on the socket.
    pub tcp: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
                tcp: None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials");
                Peer::default()
            }
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            uid: None,
            pid: None,
            tcp: Some(*stream.remote_addr()),
        }
    }
}
