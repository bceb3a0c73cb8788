//! The VMMs a benchmark compares, each booting the same kernel + initramfs.

pub mod kiln;
pub mod qemu;

use std::time::Duration;

/// One cold boot, measured from just before the VMM process is spawned.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// To guest userspace start (kiln: boot-timer device; peers: the agent's
    /// console mark).
    pub userspace: Duration,
    /// To the guest agent answering a ping over vsock.
    pub ping: Duration,
}

/// Errors from one boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VMM process could not be started.
    #[error("spawning {what}: {source}")]
    Spawn {
        /// Which VMM.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not reach the measured point in time.
    #[error("{what}: {detail}")]
    Guest {
        /// Which VMM.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// Something that can boot the benchmark guest once.
pub trait Peer {
    /// Name in the report.
    fn name(&self) -> String;
    /// Boots once (run number `i`), measures, and tears the VM down.
    fn boot_once(&self, i: usize) -> Result<BootSample, BootError>;
}

/// How long one boot may take before it counts as failed (testbed boots are
/// seconds, not milliseconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
