//! The KVM ioctls a vCPU thread issues once its VM runs, for its seccomp
//! filter: everything else (creating vCPUs, setting registers, mapping
//! memory) happens before the filter is installed.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events, KVMIO};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

// The macros define undocumented functions named after the requests.
mod numbers {
    #![allow(missing_docs)]
    use super::*;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
}
use numbers::{KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS, KVM_RUN};

/// (ioctl request, why the vCPU thread needs it) for every KVM ioctl of
/// the run loop.
pub fn vcpu_run_ioctls() -> [(u64, &'static str); 4] {
    [
        (KVM_RUN(), "enter the guest"),
        (
            KVM_GET_REGS(),
            "registers for the crash report of a dying guest",
        ),
        (KVM_GET_SREGS(), "control registers for the crash report"),
        (KVM_GET_VCPU_EVENTS(), "pending events for the crash report"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // linux/kvm.h on x86_64: _IO(0xAE, 0x80), _IOR(0xAE, 0x81, 144 bytes), ...
        let numbers: Vec<u64> = vcpu_run_ioctls().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0xae80, 0x8090_ae81, 0x8138_ae83, 0x8040_ae9f]);
    }
}
