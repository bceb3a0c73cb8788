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

/// Which kernel command line a peer's guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCmdline {
    /// kiln's own base arguments (`kiln_vmm::boot::cmdline::BASE`: no
    /// timer check, a trusted TSC, no i8042 probing), so the same guest
    /// boots the same way under every VMM and only the VMMs differ.
    SameAsKiln,
    /// Only what the peer needs (the console, reset, panic): the
    /// benchmark's command line before 2026-12-04, kept to measure what
    /// kiln's arguments are worth to a peer.
    Minimal,
}

impl PeerCmdline {
    /// The command line for a peer that resets with `reboot` (`k`: i8042,
    /// `t`: triple fault), its console on the serial port for the mark.
    pub fn render(self, reboot: &str) -> String {
        match self {
            // The later `reboot=` wins over BASE's.
            PeerCmdline::SameAsKiln => format!(
                "console=ttyS0 {} reboot={reboot} kiln.console_mark",
                kiln_vmm::boot::cmdline::BASE
            ),
            PeerCmdline::Minimal => {
                format!("console=ttyS0 quiet reboot={reboot} panic=-1 kiln.console_mark")
            }
        }
    }

    /// Suffix for a peer's name in the report.
    pub fn name_suffix(self) -> &'static str {
        match self {
            PeerCmdline::SameAsKiln => "",
            PeerCmdline::Minimal => " (own args)",
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_boots_with_kilns_arguments_and_its_own_reset_last() {
        let line = PeerCmdline::SameAsKiln.render("t");
        assert!(line.contains(kiln_vmm::boot::cmdline::BASE), "{line}");
        // The kernel applies `reboot=` options in order: the peer's own
        // must come after BASE's `reboot=k`.
        let base_at = line.find("reboot=k").expect("BASE resets with reboot=k");
        assert!(
            line.rfind("reboot=t").is_some_and(|own| own > base_at),
            "{line}"
        );
        assert!(line.starts_with("console=ttyS0 ") && line.ends_with(" kiln.console_mark"));
    }

    #[test]
    fn the_minimal_line_has_none_of_kilns_boot_shortcuts() {
        let line = PeerCmdline::Minimal.render("k");
        for shortcut in ["no_timer_check", "tsc=reliable", "i8042."] {
            assert!(!line.contains(shortcut), "{line}");
        }
        assert!(line.contains("kiln.console_mark") && line.contains("reboot=k"));
    }
}
