//! Holds KVM state open for the lifetime of the testbed so that KVM's static
//! keys never flip while tests run.
//!
//! Several KVM static keys count live objects and live-patch kernel text
//! (int3-based text poking) whenever their count moves between 0 and 1:
//! - the preempt-notifier key (any VM exists; patched in `__schedule`),
//! - `kvm_has_noapic_vcpu` (a vCPU without an in-kernel local APIC exists;
//!   patched in `kvm_arch_vcpu_ioctl_run`),
//! - `apic_sw_disabled` / `apic_hw_disabled` (a local APIC is software /
//!   hardware disabled, as every new vCPU's APIC is until its guest enables
//!   it).
//!
//! Under QEMU's multi-threaded TCG that patching races with the other vCPU
//! executing the same code, and the testbed kernel dies with "Oops: int3"
//! (seen in `__schedule` and `kvm_arch_vcpu_ioctl_run` after a few dozen VM
//! boots). Holding one object of each kind keeps every count above zero, so
//! the keys flip once, at testbed start, before any test runs.
//!
//! Usage: `kiln-testbed-keeper` — sets everything up, reports on stdout, then
//! sleeps until killed.

use std::ffi::CStr;
use std::io;

const KVM_CREATE_VM: libc::c_ulong = 0xae01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xae41;
const KVM_CREATE_IRQCHIP: libc::c_ulong = 0xae60;
/// `_IOW(KVMIO, 0x89, struct kvm_msrs)` (the struct header is 8 bytes).
const KVM_SET_MSRS: libc::c_ulong = 0x4008_ae89;
const MSR_IA32_APICBASE: u32 = 0x1b;
/// Default APIC base address, with the enable bit (11) clear.
const APICBASE_DISABLED: u64 = 0xfee0_0000;

/// `struct kvm_msrs` with one `struct kvm_msr_entry`.
#[repr(C)]
struct OneMsr {
    nmsrs: u32,
    pad: u32,
    index: u32,
    reserved: u32,
    data: u64,
}

fn check(what: &str, rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn hold() -> io::Result<()> {
    let path: &CStr = c"/dev/kvm";
    // SAFETY: opening a NUL-terminated path; the result is checked.
    let kvm = check("open /dev/kvm", unsafe {
        libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC)
    })?;

    // VM 1: no in-kernel irqchip, one vCPU without a local APIC.
    // SAFETY: KVM_CREATE_VM/KVM_CREATE_VCPU take integer arguments and
    // return new fds; no memory of ours is read or written.
    let plain = check("KVM_CREATE_VM", unsafe {
        libc::ioctl(kvm, KVM_CREATE_VM, 0)
    })?;
    // SAFETY: as above.
    check("KVM_CREATE_VCPU (no apic)", unsafe {
        libc::ioctl(plain, KVM_CREATE_VCPU, 0)
    })?;

    // VM 2: in-kernel irqchip, one vCPU whose APIC stays software-disabled
    // (it never runs) and is made hardware-disabled.
    // SAFETY: as above.
    let apic = check("KVM_CREATE_VM", unsafe {
        libc::ioctl(kvm, KVM_CREATE_VM, 0)
    })?;
    // SAFETY: KVM_CREATE_IRQCHIP takes no argument.
    check("KVM_CREATE_IRQCHIP", unsafe {
        libc::ioctl(apic, KVM_CREATE_IRQCHIP, 0)
    })?;
    // SAFETY: as above.
    let vcpu = check("KVM_CREATE_VCPU (apic)", unsafe {
        libc::ioctl(apic, KVM_CREATE_VCPU, 0)
    })?;
    let msr = OneMsr {
        nmsrs: 1,
        pad: 0,
        index: MSR_IA32_APICBASE,
        reserved: 0,
        data: APICBASE_DISABLED,
    };
    // SAFETY: KVM_SET_MSRS reads a kvm_msrs header followed by `nmsrs`
    // entries; `msr` is exactly that layout and lives across the call.
    let set = check("KVM_SET_MSRS", unsafe {
        libc::ioctl(vcpu, KVM_SET_MSRS, &msr as *const OneMsr)
    })?;
    if set != 1 {
        return Err(io::Error::other("KVM_SET_MSRS did not set the APIC base"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    if let Err(e) = hold() {
        eprintln!("testbed-keeper: {e}");
        return std::process::ExitCode::FAILURE;
    }
    println!("testbed-keeper: holding KVM state");
    loop {
        // SAFETY: pause(2) has no preconditions; it returns only on a signal.
        unsafe { libc::pause() };
    }
}
