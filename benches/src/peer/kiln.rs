//! kiln-vmm, with its userspace vsock on a unix socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_vmm::vm::timings::TimingsReport;

use super::{
    hybrid_ping, hybrid_shutdown, wait_for_pong, BootError, BootSample, Peer, BOOT_TIMEOUT,
};
use crate::child::ChildGuard;

/// A kiln-vmm configuration.
pub struct KilnVmm {
    /// `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Scratch directory for sockets and timings.
    pub scratch: PathBuf,
    /// Run with `--no-jail` (to measure what the jail costs).
    pub no_jail: bool,
    /// Another build booted for comparison (named `kiln-baseline`).
    pub baseline: bool,
    /// Run with `--no-huge-pages` (to measure what huge-page guest RAM
    /// gains).
    pub small_pages: bool,
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Guest userspace start relative to `spawn_us`, and kiln-vmm's own setup
/// time (its start to the guest's first instruction), from its timings file.
fn from_timings(path: &Path, spawn_us: u64) -> Result<(Duration, Option<Duration>), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let report: TimingsReport =
        serde_json::from_str(&text).map_err(|e| format!("timings json: {e}"))?;
    let user = report
        .userspace_start_us
        .ok_or("timings: the guest never wrote the boot timer")?;
    let setup = report.kernel_entry_us.map(Duration::from_micros);
    Ok((
        Duration::from_micros((report.start_unix_us + user).saturating_sub(spawn_us)),
        setup,
    ))
}

impl Peer for KilnVmm {
    fn name(&self) -> String {
        let build = if self.baseline {
            "kiln-baseline"
        } else {
            "kiln"
        };
        let jail = if self.no_jail { "-nojail" } else { "" };
        let pages = if self.small_pages { "-small-pages" } else { "" };
        format!("{build}{jail}{pages}")
    }

    fn boot_once(&self, i: usize) -> Result<BootSample, BootError> {
        let what = "kiln";
        let name = self.name();
        let uds = self.scratch.join(format!("{name}-{i}.sock"));
        let timings = self.scratch.join(format!("{name}-{i}.json"));
        let _ = std::fs::remove_file(&uds);
        let spawn_wall = SystemTime::now();
        let start = Instant::now();
        let child = Command::new(&self.vmm)
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initramfs")
            .arg(&self.initramfs)
            .args([
                "--vcpus",
                &self.vcpus.to_string(),
                "--mem-mib",
                &self.mem_mib.to_string(),
            ])
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--timings-json")
            .arg(&timings)
            .args(self.no_jail.then_some("--no-jail"))
            .args(self.small_pages.then_some("--no-huge-pages"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BootError::Spawn { what, source })?;
        let mut guard = ChildGuard::new(child);
        wait_for_pong(what, &mut guard, start + BOOT_TIMEOUT, || hybrid_ping(&uds))?;
        let ping = start.elapsed();
        hybrid_shutdown(&uds);
        let status = guard
            .wait_or_kill(Duration::from_secs(30))
            .map_err(|source| BootError::Spawn { what, source })?;
        if !status.is_some_and(|s| s.success()) {
            return Err(BootError::Guest {
                what,
                detail: format!("kiln-vmm did not exit cleanly: {status:?}"),
            });
        }
        let (userspace, vmm_setup) = from_timings(&timings, unix_us(spawn_wall))
            .map_err(|detail| BootError::Guest { what, detail })?;
        let _ = std::fs::remove_file(&timings);
        Ok(BootSample {
            userspace,
            ping,
            vmm_setup,
        })
    }
}
