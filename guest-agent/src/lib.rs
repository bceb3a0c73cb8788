//! kiln guest agent library: the host<->guest wire protocol, a small
//! blocking client, and (cargo feature `tokio`) an async one.
//!
//! The same crate builds the `kiln-agent` binary, which runs as PID 1 inside
//! the microVM and serves this protocol on vsock port
//! [`protocol::AGENT_VSOCK_PORT`]. Host code (the VMM, the daemon, tests)
//! uses [`client`] over any `Read + Write` stream, for example the hybrid
//! vsock unix socket of a VM or the `--listen-unix` socket of an agent run
//! on the host.

#[cfg(feature = "tokio")]
pub mod async_client;
pub mod client;
pub mod protocol;
