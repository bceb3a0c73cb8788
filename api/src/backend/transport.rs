//! How the HTTP client reaches a daemon: its unix socket (as an
//! administrator) or its TCP listener (as a sandbox-token holder, the
//! token sent with every request). One connection per request.

use std::net::SocketAddr;
use std::path::PathBuf;

use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Error, Result};

/// Where the daemon is.
pub(crate) enum Transport {
    /// The unix socket.
    Unix(PathBuf),
    /// The TCP listener, with the bearer token.
    Tcp {
        /// The listener.
        addr: SocketAddr,
        /// `Bearer <token>`.
        authorization: HeaderValue,
    },
}

impl Transport {
    /// The TCP listener at `addr`, reached with `token`.
    pub(crate) fn tcp(addr: SocketAddr, token: &str) -> Result<Self> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::invalid("a token is visible ASCII"))?;
        authorization.set_sensitive(true);
        Ok(Transport::Tcp {
            addr,
            authorization,
        })
    }

    /// `unavailable`, naming where.
    pub(crate) fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        match self {
            Transport::Unix(path) => Error::Unavailable(format!("{}: {e}", path.display())),
            Transport::Tcp { addr, .. } => Error::Unavailable(format!("{addr}: {e}")),
        }
    }

    /// Opens a connection; returns its request sender.
    pub(crate) async fn connect<B>(&self) -> Result<SendRequest<B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self {
            Transport::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.handshake(stream).await
            }
            Transport::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S, B>(&self, stream: S) -> Result<SendRequest<B>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Adds what the transport needs to a request (the token on TCP).
    pub(crate) fn authorize<B>(&self, req: &mut Request<B>) {
        if let Transport::Tcp { authorization, .. } = self {
            req.headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
    }
}
