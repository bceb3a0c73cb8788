//! x86_64 vCPU state for KVM: CPUID, MSRs, FPU, local APIC and entry registers.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use crate::hypervisor::{EntryMode, EntryState, HypervisorError, Result};

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_IA32_TSC: u32 = 0x10;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Local APIC register offsets and delivery modes used to wire LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// CPUID.1:ECX bit: the local APIC timer has TSC-deadline mode.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Passes the host's supported CPUID through, with per-vCPU topology fixed up.
pub(super) fn configure_cpuid(kvm: &Kvm, fd: &VcpuFd, id: u8, count: u8) -> Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| HypervisorError::call("KVM_GET_SUPPORTED_CPUID", e))?;
    // KVM emulates the TSC-deadline timer but leaves it out of the
    // supported CPUID. Without it Linux calibrates the APIC timer against
    // the PIT at boot, and on a busy host the check fails ("APIC timer
    // disabled due to verification failure"): the guest then runs on the
    // PIT, and its timers misbehave.
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // Initial APIC id and logical processor count; hypervisor bit.
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << 31;
                if tsc_deadline {
                    entry.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= 1 << 28; // HTT: count field is valid
                }
            }
            0xb | 0x1f => entry.edx = u32::from(id),
            6 => entry.ecx &= !(1 << 3), // no energy-performance bias MSR
            _ => {}
        }
    }
    fd.set_cpuid2(&cpuid)
        .map_err(|e| HypervisorError::call("KVM_SET_CPUID2", e))
}

/// Sets the MSRs a freshly reset CPU has and Linux expects.
pub(super) fn configure_msrs(fd: &VcpuFd) -> Result<()> {
    let entries = [
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: 0,
            ..Default::default()
        },
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Call {
        op: "building MSR list",
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    let set = fd
        .set_msrs(&msrs)
        .map_err(|e| HypervisorError::call("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(HypervisorError::call(
            "KVM_SET_MSRS (partial)",
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(())
}

/// x87 and SSE control words at their reset values.
pub(super) fn configure_fpu(fd: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu)
        .map_err(|e| HypervisorError::call("KVM_SET_FPU", e))
}

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT (legacy PIC) and LINT1 as NMI, as firmware would leave them.
pub(super) fn configure_lapic(fd: &VcpuFd) -> Result<()> {
    let mut lapic = fd
        .get_lapic()
        .map_err(|e| HypervisorError::call("KVM_GET_LAPIC", e))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        set_apic_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        set_apic_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    fd.set_lapic(&lapic)
        .map_err(|e| HypervisorError::call("KVM_SET_LAPIC", e))
}

fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Loads segment, control and general registers for the given entry state.
pub(super) fn set_entry_state(fd: &VcpuFd, state: &EntryState) -> Result<()> {
    let mut sregs = fd
        .get_sregs()
        .map_err(|e| HypervisorError::call("KVM_GET_SREGS", e))?;
    let long = matches!(state.mode, EntryMode::Long64 { .. });
    // Code: execute/read, accessed. Data: read/write, accessed.
    let code = flat_segment(0x8, 0xb, long);
    let data = flat_segment(0x10, 0x3, false);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x18,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.cr0 = CR0_PE | CR0_ET;
    match state.mode {
        EntryMode::Protected32 => {
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long64 { pml4 } => {
            sregs.cr3 = pml4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            sregs.cr0 |= CR0_PG;
        }
    }
    fd.set_sregs(&sregs)
        .map_err(|e| HypervisorError::call("KVM_SET_SREGS", e))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: state.rip,
        rsp: state.rsp,
        rbp: state.rsp,
        rbx: state.rbx,
        rsi: state.rsi,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(|e| HypervisorError::call("KVM_SET_REGS", e))
}

/// Registers, control registers and pending exception/interrupt state, for
/// a crash log line; what KVM refuses to give is named instead.
pub(super) fn describe_state(fd: &VcpuFd) -> String {
    let regs = match fd.get_regs() {
        Ok(r) => format!(
            "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        ),
        Err(e) => format!("regs unavailable ({e})"),
    };
    let sregs = match fd.get_sregs() {
        Ok(s) => format!(
            "cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} idt {:#x}/{:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.idt.base, s.idt.limit
        ),
        Err(e) => format!("sregs unavailable ({e})"),
    };
    let events = match fd.get_vcpu_events() {
        Ok(e) => format!(
            "exception injected {} nr {} error {:#x}; interrupt injected {} nr {}; nmi pending {}",
            e.exception.injected,
            e.exception.nr,
            e.exception.error_code,
            e.interrupt.injected,
            e.interrupt.nr,
            e.nmi.pending
        ),
        Err(e) => format!("events unavailable ({e})"),
    };
    format!("{regs}; {sregs}; {events}")
}
