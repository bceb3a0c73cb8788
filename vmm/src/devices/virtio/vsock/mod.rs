//! Userspace virtio-vsock with a Firecracker-style hybrid host side.
//!
//! The guest sees a normal virtio socket device (guest CID from its config,
//! host CID [`HOST_CID`]). The host side is unix sockets:
//!
//! - host -> guest: the VMM listens on `uds_path`; a client connects, sends
//!   `CONNECT <port>\n` and reads `OK <local_port>\n` once the guest accepts
//!   (the socket is closed instead if the guest refuses or doesn't answer in
//!   time). After that the unix stream carries the connection's bytes.
//! - guest -> host: a guest connection to host port `P` is forwarded to the
//!   unix socket `<uds_path>_<P>` if something listens there; else RST.
//!
//! Files: `packet.rs` parses and writes the 44-byte header from descriptor
//! chains, `connection.rs` is the per-connection state machine with credit
//! flow control, `unix.rs` the host-socket helpers (CONNECT line, connect),
//! `muxer.rs` maps connections and unix sockets, `device.rs` the virtio side
//! and `event_handler.rs` the event loop side.
//!
//! Bounds: a guest can't make the host buffer more than [`CONN_BUF_SIZE`]
//! per connection nor hold more than [`MAX_CONNECTIONS`] connections; host
//! clients are bounded by [`MAX_PENDING_HOST`] and [`MAX_CONNECT_LINE`].

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
mod unix;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Vsock;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The CID kiln gives its guests.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Index of the receive (device -> guest) queue.
pub const RXQ: usize = 0;
/// Index of the transmit (guest -> device) queue.
pub const TXQ: usize = 1;
/// Index of the event queue.
pub const EVQ: usize = 2;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload accepted from or sent to the guest in one packet.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Host-side buffer per connection for guest -> host bytes; advertised to
/// the guest as `buf_alloc`, so a well-behaved guest never exceeds it and a
/// misbehaving one is reset.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Most live connections per device.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have connected but not finished their CONNECT line.
pub const MAX_PENDING_HOST: usize = 64;
/// Longest CONNECT line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most queued RSTs for packets that match no connection.
pub const MAX_PENDING_RST: usize = 256;
/// Default time a host client gets to send its CONNECT line, and the guest
/// to answer the resulting REQUEST.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a closing connection waits for the peer before it is reset.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `virtio_vsock_hdr.type`: stream socket.
pub const TYPE_STREAM: u16 = 1;

/// Operations (`virtio_vsock_hdr.op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset / refused.
    pub const RST: u16 = 3;
    /// One or both directions closed.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Unsolicited credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Errors from setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2 or u32::MAX and above).
    #[error("invalid guest CID {0}")]
    InvalidCid(u64),
    /// The host unix socket could not be created.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd or timerfd could not be created.
    #[error("cannot create event fd")]
    EventFd(#[source] std::io::Error),
}
