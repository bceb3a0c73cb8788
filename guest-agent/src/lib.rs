//! kiln guest agent library: the host<->guest wire protocol and a small
//! blocking client.
//!
//! The same crate builds the `kiln-agent` binary, which runs as PID 1 inside
//! the microVM and serves this protocol on vsock port
//! [`protocol::AGENT_VSOCK_PORT`]. Host code (the VMM, the daemon, tests)
//! uses [`client`] over any `Read + Write` stream, for example the hybrid
//! vsock unix socket of a VM or the `--listen-unix` socket of an agent run
//! on the host.

pub mod client;
pub mod protocol;
