//! Refusing early, with the reason, on hosts whose KVM cannot run kiln's VMs.
//!
//! The CPL0 probe (see `kiln_vmm::probe`) costs a few milliseconds on
//! hardware KVM and seconds on an emulating one; its verdict is cached per
//! boot of the host (keyed by `/proc/sys/kernel/random/boot_id`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_vmm::hypervisor::kvm::{KvmHypervisor, KVM_PATH};
use kiln_vmm::hypervisor::Hypervisor;
use kiln_vmm::probe::{self, EMULATED_SLOWDOWN};

/// Why this host cannot run kiln's VMs.
#[derive(Debug, thiserror::Error)]
pub enum KvmCheckError {
    /// No /dev/kvm.
    #[error("{KVM_PATH} does not exist: this host has no KVM (enable hardware virtualization and load kvm_intel or kvm_amd), or run kiln inside the testbed (tools/testbed)")]
    Missing,
    /// /dev/kvm could not be opened or lacks capabilities.
    #[error("{KVM_PATH} is not usable: {0}")]
    Unusable(String),
    /// /dev/kvm emulates guest kernel mode.
    #[error("this host's {KVM_PATH} emulates guest kernel mode (guest CPL0 code ran {0:.0}x slower than the host): Linux guests cannot boot on it; run kiln inside the testbed (tools/testbed run -- kiln run ...) or on a host with hardware virtualization")]
    Emulated(f64),
    /// The probe guest failed outright.
    #[error("{KVM_PATH} cannot run a tiny guest at CPL0: {0}")]
    ProbeFailed(String),
}

/// The probe's verdict as stored in the cache: the slowdown factor.
fn verdict(slowdown: f64) -> Result<(), KvmCheckError> {
    if slowdown < EMULATED_SLOWDOWN {
        Ok(())
    } else {
        Err(KvmCheckError::Emulated(slowdown))
    }
}

fn cache_path() -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(std::env::temp_dir().join(format!("kiln-kvm-probe-{}", boot_id.trim())))
}

fn read_cache(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Checks that `/dev/kvm` exists, opens, and runs guest kernel mode at
/// hardware speed.
pub fn ensure_hardware_kvm() -> Result<(), KvmCheckError> {
    if !Path::new(KVM_PATH).exists() {
        return Err(KvmCheckError::Missing);
    }
    let kvm = KvmHypervisor::open().map_err(|e| KvmCheckError::Unusable(e.to_string()))?;
    let cache = cache_path();
    if let Some(slowdown) = cache.as_deref().and_then(read_cache) {
        return verdict(slowdown);
    }
    let hv: &'static dyn Hypervisor = Box::leak(Box::new(kvm));
    let slowdown = match probe::run(hv, Duration::from_secs(20)) {
        Ok(report) => report.slowdown(),
        Err(probe::ProbeError::TimedOut(_)) => f64::INFINITY,
        Err(e) => return Err(KvmCheckError::ProbeFailed(e.to_string())),
    };
    if let Some(path) = cache {
        let _ = std::fs::write(path, format!("{slowdown}\n"));
    }
    verdict(slowdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_threshold() {
        assert!(verdict(1.1).is_ok());
        assert!(verdict(EMULATED_SLOWDOWN - 1.0).is_ok());
        let err = verdict(3825.0).expect_err("emulated");
        assert!(err.to_string().contains("emulates guest kernel mode"));
        assert!(err.to_string().contains("3825x"));
        assert!(verdict(f64::INFINITY).is_err());
    }

    #[test]
    fn cache_round_trip_and_garbage() {
        let dir = std::env::temp_dir().join(format!("kiln-kvmcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("c");
        std::fs::write(&p, "12.5\n").expect("write");
        assert_eq!(read_cache(&p), Some(12.5));
        std::fs::write(&p, "garbage").expect("write");
        assert_eq!(read_cache(&p), None);
        assert_eq!(read_cache(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
