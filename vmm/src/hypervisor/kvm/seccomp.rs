//! The KVM ioctls a vCPU thread issues once its VM runs, and those the
//! control thread issues for a snapshot, for their seccomp filters:
//! everything else (creating vCPUs, setting registers, restoring state,
//! mapping memory) happens before the filters are installed.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

// The macros define undocumented functions named after the requests.
mod numbers {
    #![allow(missing_docs)]
    use super::*;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
}
use numbers::*;

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

/// (ioctl request, why) for the state a parked vCPU thread saves for a
/// snapshot (`hypervisor::kvm::state::save_vcpu`).
pub fn vcpu_snapshot_ioctls() -> [(u64, &'static str); 8] {
    [
        (
            KVM_GET_MSRS(),
            "snapshot: MSRs (TSC, kvm-clock, syscall entry)",
        ),
        (KVM_GET_LAPIC(), "snapshot: local APIC"),
        (KVM_GET_MP_STATE(), "snapshot: running or halted"),
        (KVM_GET_DEBUGREGS(), "snapshot: debug registers"),
        (KVM_GET_XSAVE(), "snapshot: FPU/SSE/AVX state"),
        (
            KVM_GET_XSAVE2(),
            "snapshot: xsave state beyond 4 KiB (AMX hosts)",
        ),
        (KVM_GET_XCRS(), "snapshot: XCR0"),
        (KVM_GET_TSC_KHZ(), "snapshot: the guest TSC frequency"),
    ]
}

/// (ioctl request, why) for the VM-wide state the control thread saves
/// (`hypervisor::kvm::state::save_vm`).
pub fn vm_snapshot_ioctls() -> [(u64, &'static str); 3] {
    [
        (KVM_GET_IRQCHIP(), "snapshot: PIC and IOAPIC"),
        (KVM_GET_CLOCK(), "snapshot: kvm-clock"),
        (KVM_GET_PIT2(), "snapshot: PIT"),
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
        // _IOWR(0xAE, 0x88, 8), _IOR(0xAE, 0x8e, 1024), _IOR(0xAE, 0xa4, 4096), ...
        let numbers: Vec<u64> = vcpu_snapshot_ioctls().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            [
                0xc008_ae88,
                0x8400_ae8e,
                0x8004_ae98,
                0x8080_aea1,
                0x9000_aea4,
                0x9000_aecf,
                0x8188_aea6,
                0xaea3
            ]
        );
        let numbers: Vec<u64> = vm_snapshot_ioctls().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0xc208_ae62, 0x8030_ae7c, 0x8070_ae9f]);
    }
}
