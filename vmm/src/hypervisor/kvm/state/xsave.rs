//! xsave state of any size: the legacy 4 KiB `kvm_xsave` when this host's
//! state fits it, else `KVM_GET_XSAVE2` with the size KVM reports
//! (`KVM_CAP_XSAVE2` on the VM: AMX tiles and other large features).

use kvm_bindings::{kvm_xsave, Xsave};
use kvm_ioctls::VcpuFd;

use super::call;
use crate::hypervisor::{HypervisorError, Result};

/// Bytes of the legacy xsave region.
const LEGACY_BYTES: usize = std::mem::size_of::<kvm_xsave>();

/// 32-bit words of xsave state beyond the legacy region for a host whose
/// KVM reports `xsave_bytes` (0 when it fits 4 KiB or the cap is absent).
pub(crate) fn extra_words(xsave_bytes: usize) -> usize {
    xsave_bytes.saturating_sub(LEGACY_BYTES).div_ceil(4)
}

fn buffer(extra: usize) -> Result<Xsave> {
    Xsave::new(extra).map_err(|_| {
        HypervisorError::call(
            "allocating the xsave buffer",
            std::io::Error::from_raw_os_error(libc::ENOMEM),
        )
    })
}

/// Reads the vCPU's xsave state: the legacy region and the `extra` words
/// beyond it this host's KVM saves.
pub(super) fn save(fd: &VcpuFd, extra: usize) -> Result<(kvm_xsave, Vec<u32>)> {
    if extra == 0 {
        return Ok((call("KVM_GET_XSAVE", fd.get_xsave())?, Vec::new()));
    }
    let mut xsave = buffer(extra)?;
    // SAFETY: `xsave` holds the legacy region plus the `extra` words that
    // KVM_CAP_XSAVE2 reported for this VM, all KVM_GET_XSAVE2 writes; kiln
    // never enables an xstate feature (arch_prctl) after asking.
    call("KVM_GET_XSAVE2", unsafe { fd.get_xsave2(&mut xsave) })?;
    let legacy = kvm_xsave {
        region: xsave.as_fam_struct_ref().xsave.region,
        ..Default::default()
    };
    Ok((legacy, xsave.as_slice().to_vec()))
}

/// Loads a snapshot's xsave state into a vCPU of a host whose KVM takes
/// `extra` words beyond the legacy region; refused when the snapshot holds
/// more than this host can load.
pub(super) fn restore(fd: &VcpuFd, legacy: &kvm_xsave, saved: &[u32], extra: usize) -> Result<()> {
    if saved.len() > extra {
        return Err(HypervisorError::Incompatible(format!(
            "its xsave state is {} bytes, this host's KVM takes {}",
            LEGACY_BYTES + 4 * saved.len(),
            LEGACY_BYTES + 4 * extra
        )));
    }
    if extra == 0 {
        // SAFETY: this host's xsave state fits the legacy 4 KiB region
        // (KVM_CAP_XSAVE2 says so or is absent), all KVM_SET_XSAVE reads.
        return call("KVM_SET_XSAVE", unsafe { fd.set_xsave(legacy) });
    }
    let mut xsave = buffer(extra)?;
    // SAFETY: only the legacy region is written, never the entry count the
    // wrapper's bounds rely on.
    unsafe { xsave.as_mut_fam_struct() }.xsave.region = legacy.region;
    xsave.as_mut_slice()[..saved.len()].copy_from_slice(saved);
    // SAFETY: `xsave` has the full size this host's KVM reports
    // (KVM_CAP_XSAVE2), all KVM_SET_XSAVE reads.
    call("KVM_SET_XSAVE", unsafe { fd.set_xsave2(&xsave) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_words_beyond_the_legacy_region() {
        assert_eq!(LEGACY_BYTES, 4096);
        assert_eq!(extra_words(0), 0);
        assert_eq!(extra_words(4096), 0);
        assert_eq!(extra_words(4097), 1);
        // An AMX host: 11008 bytes.
        assert_eq!(extra_words(11008), (11008 - 4096) / 4);
    }
}
