//! virtio-rng: an entropy source filled from the host's `getrandom(2)`.
//!
//! The smallest device, and the template for new ones: `device.rs` holds the
//! virtio state, `event_handler.rs` the event-loop side.

mod device;
mod event_handler;

pub use device::Rng;

/// Queue size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out for one request, whatever the guest's buffer size.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Errors from the rng device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The host entropy source failed.
    #[error("getrandom failed")]
    GetRandom(#[source] std::io::Error),
}
