//! The guest end of egress: a TCP listener on the guest's loopback
//! ([`EGRESS_GUEST_ADDR`], where programs' `HTTP_PROXY`/`HTTPS_PROXY`
//! point) that forwards each connection byte for byte over vsock to the
//! host (CID 2, [`EGRESS_VSOCK_PORT`]). The host's proxy does every check;
//! for a sandbox without an allowlist nothing listens on the host side and
//! each connection is closed at once.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::conn::Conn;
use super::listener::{vsock_addr, vsock_socket};
use kiln_agent::protocol::{EGRESS_GUEST_ADDR, EGRESS_VSOCK_PORT};

/// Most connections forwarded at once (the host caps them too).
const MAX_FORWARDS: usize = 64;

/// Opens the upstream end of one forwarded connection.
type Connect = dyn Fn() -> io::Result<OwnedFd> + Send + Sync;

/// Listens on [`EGRESS_GUEST_ADDR`] and forwards to the host over vsock,
/// in a thread of its own.
pub fn start() -> io::Result<()> {
    let listener = TcpListener::bind(EGRESS_GUEST_ADDR)?;
    spawn(
        listener,
        Arc::new(|| connect_vsock(libc::VMADDR_CID_HOST, EGRESS_VSOCK_PORT)),
    )
}

fn spawn(listener: TcpListener, connect: Arc<Connect>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("egress".into())
        .spawn(move || serve(&listener, &connect))
        .map(drop)
}

/// Counts a forwarded connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FORWARDS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve(listener: &TcpListener, connect: &Arc<Connect>) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((client, _)) = listener.accept() else {
            // EMFILE and the like: back off instead of spinning.
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        // Over the cap the connection just closes.
        let Some(slot) = Slot::take(&live) else {
            continue;
        };
        let connect = Arc::clone(connect);
        let client = Conn::new(OwnedFd::from(client));
        let spawned = std::thread::Builder::new()
            .name("egress-conn".into())
            .spawn(move || {
                // No host proxy (no allowlist): the client sees a close.
                if let Ok(upstream) = connect() {
                    forward(client, Conn::new(upstream));
                }
                drop(slot);
            });
        if spawned.is_err() {
            continue;
        }
    }
}

/// Copies both ways until both sides have ended; each end of stream is
/// passed on as a half-close.
fn forward(client: Conn, upstream: Conn) {
    let (Ok(client_r), Ok(upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("egress-up".into())
        .spawn(move || one_way(client_r, upstream_w));
    let Ok(up) = up else {
        return;
    };
    one_way(upstream, client);
    let _ = up.join();
}

fn one_way(mut from: Conn, mut to: Conn) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => to.shutdown_write(),
        // Either side failed: wake the other direction too.
        Err(_) => {
            from.shutdown();
            to.shutdown();
        }
    }
}

/// A stream connection to `cid:port` over AF_VSOCK.
fn connect_vsock(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm and the length is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A forwarder on an ephemeral loopback port whose upstream is a unix
    /// socket served by `upstream`.
    fn forwarder(name: &str, upstream: impl FnOnce(UnixListener) + Send + 'static) -> u16 {
        let path = std::env::temp_dir().join(format!("kiln-egress-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let host = UnixListener::bind(&path).expect("bind upstream");
        std::thread::spawn(move || upstream(host));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connect: Arc<Connect> =
            Arc::new(move || std::os::unix::net::UnixStream::connect(&path).map(OwnedFd::from));
        spawn(listener, connect).expect("spawn");
        port
    }

    #[test]
    fn bytes_go_through_both_ways_with_half_closes() {
        let port = forwarder("echo", |host| {
            let (mut s, _) = host.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got)
                .expect("read to the client's half-close");
            got.reverse();
            s.write_all(&got).expect("write back");
        });
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"CONNECT x:443 HTTP/1.1\r\n\r\n")
            .expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut back = String::new();
        c.read_to_string(&mut back).expect("read");
        assert_eq!(back, "\n\r\n\r1.1/PTTH 344:x TCENNOC");
    }

    #[test]
    fn without_a_host_side_the_client_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refused: Arc<Connect> =
            Arc::new(|| Err(io::Error::from(io::ErrorKind::ConnectionRefused)));
        spawn(listener, refused).expect("spawn");
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        assert_eq!(c.read_to_end(&mut buf).expect("closed, not hung"), 0);
    }
}
