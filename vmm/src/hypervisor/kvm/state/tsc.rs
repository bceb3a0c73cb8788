//! The guest TSC frequency: recorded with a snapshot and, on restore, set
//! with `KVM_SET_TSC_KHZ` when this host's differs (the guest calibrated
//! its clocks against the saved one); refused clearly when KVM cannot
//! scale the TSC here.

use kvm_ioctls::VcpuFd;

use super::{call, VcpuCaps};
use crate::hypervisor::{HypervisorError, Result};

/// How far two frequencies may differ and count as the same: Linux's own
/// tolerance for a calibrated TSC (`tsc_tolerance_ppm`).
const TOLERANCE_PPM: u64 = 250;

/// What a restore does about the guest TSC frequency.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Same frequency here (within [`TOLERANCE_PPM`]).
    Keep,
    /// Scale this vCPU's TSC to the saved frequency.
    Scale,
    /// This host cannot run the guest's TSC at its frequency.
    Refuse(String),
}

fn decide(saved: u32, here: Option<u32>, can_scale: bool) -> Action {
    let close =
        |here: u32| u64::from(saved.abs_diff(here)) * 1_000_000 <= u64::from(saved) * TOLERANCE_PPM;
    match (here, can_scale) {
        (Some(here), _) if close(here) => Action::Keep,
        (_, true) => Action::Scale,
        (Some(here), false) => Action::Refuse(format!(
            "its guest TSC runs at {saved} kHz, this host's at {here} kHz, \
             and this host's KVM cannot scale the TSC (no KVM_CAP_TSC_CONTROL)"
        )),
        (None, false) => Action::Refuse(format!(
            "its guest TSC runs at {saved} kHz, and this host's KVM can neither \
             report nor scale the TSC frequency"
        )),
    }
}

/// The vCPU's TSC frequency, when KVM reports it.
pub(super) fn save(fd: &VcpuFd, caps: &VcpuCaps) -> Result<Option<u32>> {
    if !caps.tsc_khz_readable {
        return Ok(None);
    }
    call("KVM_GET_TSC_KHZ", fd.get_tsc_khz()).map(Some)
}

/// Runs the vCPU's TSC at the `saved` frequency; before the TSC MSR is
/// restored.
pub(super) fn restore(fd: &VcpuFd, saved: Option<u32>, caps: &VcpuCaps) -> Result<()> {
    let Some(saved) = saved else {
        return Ok(());
    };
    let here = match caps.tsc_khz_readable {
        true => Some(call("KVM_GET_TSC_KHZ", fd.get_tsc_khz())?),
        false => None,
    };
    match decide(saved, here, caps.tsc_scaling) {
        Action::Keep => Ok(()),
        Action::Scale => {
            tracing::info!("restore: scaling the guest TSC to {saved} kHz (host: {here:?} kHz)");
            fd.set_tsc_khz(saved).map_err(|e| {
                HypervisorError::Incompatible(format!(
                    "its guest TSC runs at {saved} kHz, this host's at {here:?} kHz, \
                     and KVM_SET_TSC_KHZ refused to scale it: {e}"
                ))
            })
        }
        Action::Refuse(why) => Err(HypervisorError::Incompatible(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_frequency_within_tolerance_is_kept() {
        assert_eq!(decide(2_000_000, Some(2_000_000), false), Action::Keep);
        // 250 ppm of 2 GHz is 500 kHz.
        assert_eq!(decide(2_000_000, Some(2_000_500), false), Action::Keep);
        assert_eq!(decide(2_000_000, Some(1_999_500), false), Action::Keep);
    }

    #[test]
    fn another_frequency_is_scaled_or_refused() {
        assert_eq!(decide(2_000_000, Some(2_000_501), true), Action::Scale);
        assert_eq!(decide(2_000_000, Some(3_000_000), true), Action::Scale);
        assert_eq!(decide(2_000_000, None, true), Action::Scale);
        let Action::Refuse(why) = decide(2_000_000, Some(3_000_000), false) else {
            panic!("a host without TSC scaling must refuse");
        };
        assert!(
            why.contains("2000000 kHz") && why.contains("3000000 kHz"),
            "{why}"
        );
        assert!(matches!(decide(2_000_000, None, false), Action::Refuse(_)));
    }
}
