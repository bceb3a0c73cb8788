//! The VMMs a benchmark compares, each booting the same kernel + initramfs.

pub mod fc_api;
pub mod firecracker;
pub mod firecracker_snapshot;
pub mod kiln;
pub mod qemu;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_agent::client;
use kiln_agent::protocol::AGENT_VSOCK_PORT;
use kiln_vmm::vm::hybrid_vsock;

use crate::child::ChildGuard;

/// The line kiln's agent prints on the console when booted with
/// `kiln.console_mark` (peers have no kiln boot-timer device).
pub const CONSOLE_MARK: &str = "kiln-agent: userspace started";

/// The instant [`CONSOLE_MARK`] shows up on a guest console (a VMM's
/// stdout), read on a thread of its own.
pub struct ConsoleMark {
    what: &'static str,
    rx: mpsc::Receiver<Instant>,
}

impl ConsoleMark {
    /// Watches the piped stdout of the VMM in `guard`.
    pub fn watch(what: &'static str, guard: &mut ChildGuard) -> Result<Self, BootError> {
        let console = guard
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| BootError::Guest {
                what,
                detail: "no stdout pipe".into(),
            })?;
        Ok(Self::watch_reader(what, console))
    }

    fn watch_reader(what: &'static str, console: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(console).lines() {
                let Ok(line) = line else { break };
                if line.contains(CONSOLE_MARK) {
                    let _ = tx.send(Instant::now());
                }
            }
        });
        ConsoleMark { what, rx }
    }

    /// Time from `start` to the mark (waiting up to 10 s more for it).
    pub fn since(&self, start: Instant) -> Result<Duration, BootError> {
        self.rx
            .recv_timeout(Duration::from_secs(10))
            .map(|at| at.duration_since(start))
            .map_err(|_| BootError::Guest {
                what: self.what,
                detail: "no userspace mark on the console".into(),
            })
    }
}

/// One ping of the agent behind a hybrid-vsock unix socket (kiln-vmm's and
/// Firecracker's): `None` while nothing accepts, else whether it answered.
pub fn hybrid_ping(uds: &Path) -> Option<bool> {
    let mut stream = hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, Duration::from_secs(5)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    Some(client::ping(&mut stream).is_ok())
}

/// Asks the agent behind a hybrid-vsock socket to power the guest off.
pub fn hybrid_shutdown(uds: &Path) {
    if let Ok(mut stream) = hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, Duration::from_secs(5)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = client::shutdown(&mut stream);
    }
}

/// One cold boot, measured from just before the VMM process is spawned.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// To guest userspace start (kiln: boot-timer device; peers: the agent's
    /// console mark).
    pub userspace: Duration,
    /// To the guest agent answering a ping over vsock.
    pub ping: Duration,
    /// VMM process start to the guest's first instruction, as the VMM
    /// measured it (kiln only): the VMM's own setup, jail included, without
    /// the guest's boot.
    pub vmm_setup: Option<Duration>,
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
pub trait Peer: Sync {
    /// Name in the report.
    fn name(&self) -> String;
    /// Boots once (run number `i`), measures, and tears the VM down.
    fn boot_once(&self, i: usize) -> Result<BootSample, BootError>;
}

/// How long one boot may take before it counts as failed (testbed boots are
/// seconds, not milliseconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Calls `try_ping` until the guest agent answers: `None` means no
/// connection yet (retried after 1 ms), `Some(answered)` a ping attempt.
/// Fails when the VMM process (`what`) exits or `deadline` passes.
pub fn wait_for_pong(
    what: &'static str,
    guard: &mut ChildGuard,
    deadline: Instant,
    mut try_ping: impl FnMut() -> Option<bool>,
) -> Result<(), BootError> {
    loop {
        if Instant::now() > deadline {
            return Err(BootError::Guest {
                what,
                detail: format!("agent did not answer a ping within {BOOT_TIMEOUT:?}"),
            });
        }
        if let Ok(Some(status)) = guard.child_mut().try_wait() {
            return Err(BootError::Guest {
                what,
                detail: format!("the VMM exited early: {status}"),
            });
        }
        match try_ping() {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
