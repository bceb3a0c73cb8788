//! The unix socket: created owner-only (umask during bind, then the
//! configured mode and group), a stale one replaced, a live one refused.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use tokio::net::UnixListener;

use crate::config::ServerConfig;

/// Why `kiln serve` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on the socket.
    #[error("{0} is in use by another kiln daemon")]
    InUse(PathBuf),
    /// Creating or securing the socket failed.
    #[error("socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The configured group does not exist.
    #[error("socket group {0:?} not found in /etc/group")]
    Group(String),
    /// The TCP listener could not be bound.
    #[error("TCP listener {addr}: {source}")]
    Tcp {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The configuration is invalid (a non-loopback `listen`, ...).
    #[error(transparent)]
    Config(crate::config::ConfigError),
    /// The core could not start (state dir locked, bad config, ...).
    #[error(transparent)]
    Core(crate::Error),
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(#[source] io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A group id from a name or number.
fn group_id(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| SocketError::Group(group.to_string()))
}

/// Binds the socket at `path`. Call before other threads create files:
/// the umask is process-wide while it is tightened.
pub(super) fn bind(path: &Path, config: &ServerConfig) -> Result<UnixListener, SocketError> {
    let gid = config.socket_group.as_deref().map(group_id).transpose()?;
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        // A directory made here (often the state dir) is the owner's; the
        // socket's group, when configured, may only pass through it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if gid.is_some() { 0o710 } else { 0o700 })
            .create(dir)
            .map_err(io_err(path))?;
        if gid.is_some() {
            std::os::unix::fs::chown(dir, None, gid).map_err(io_err(path))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    // Owner-only from the start; widened below if configured.
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(io_err(path))?;
    if gid.is_some() {
        std::os::unix::fs::chown(path, None, gid).map_err(io_err(path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(io_err(path))?;
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_number_or_name() {
        assert_eq!(group_id("123").expect("number"), 123);
        assert_eq!(group_id("root").expect("root group"), 0);
        assert!(matches!(
            group_id("no-such-group-kiln"),
            Err(SocketError::Group(_))
        ));
    }

    #[tokio::test]
    async fn owner_only_and_a_live_socket_is_refused() {
        let dir = std::env::temp_dir().join(format!("kiln-sock-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path, &ServerConfig::default()).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            bind(&path, &ServerConfig::default()),
            Err(SocketError::InUse(_))
        ));
        drop(listener);
        // Stale now: replaced.
        let wide = ServerConfig {
            socket_mode: 0o660,
            ..ServerConfig::default()
        };
        let _l = bind(&path, &wide).expect("rebind over a stale socket");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let _ = std::fs::remove_dir_all(dir);
    }
}
