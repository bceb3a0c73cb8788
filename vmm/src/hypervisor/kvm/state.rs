//! Saving and restoring KVM vCPU and VM state for snapshots.
//!
//! The order of the restoring calls follows what KVM needs: CPUID before
//! anything (it decides which MSRs and xsave features exist), the TSC
//! frequency before the TSC itself (`state/tsc.rs`), MP state and registers, then
//! the LAPIC before the MSRs (the TSC-deadline MSR is only accepted with
//! the APIC in the right mode), and the pending events last. xsave state
//! larger than 4 KiB goes through `KVM_GET_XSAVE2` (`state/xsave.rs`).

mod tsc;
mod xsave;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::hypervisor::{HypervisorError, Result};

/// MSRs read or written per `KVM_GET_MSRS`/`KVM_SET_MSRS` call (KVM caps a
/// call at `KVM_MAX_MSR_ENTRIES`, 256).
const MSR_CHUNK: usize = 64;

/// Everything KVM holds about one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87, SSE and AVX state: the legacy 4 KiB xsave region.
    pub xsave: kvm_xsave,
    /// xsave state beyond the legacy region (32-bit words), on hosts whose
    /// KVM saves more than 4 KiB (`KVM_GET_XSAVE2`); empty elsewhere.
    pub xsave_extra: Vec<u32>,
    /// The guest TSC frequency in kHz, when KVM reports it; a restore runs
    /// the guest's TSC at this frequency or refuses.
    pub tsc_khz: Option<u32>,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Every MSR KVM saves (its MSR index list) that this vCPU could read,
    /// the TSC and kvm-clock MSRs among them.
    pub msrs: Vec<kvm_msr_entry>,
}

/// The VM-wide interrupt controllers and clocks.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// The 8259 master.
    pub pic_master: kvm_irqchip,
    /// The 8259 slave.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// The kvm-clock base.
    pub clock: kvm_clock_data,
}

/// What this host's KVM can do for vCPU state, asked once per VM.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct VcpuCaps {
    /// xsave words beyond the legacy 4 KiB region (`KVM_CAP_XSAVE2`).
    pub xsave_extra_words: usize,
    /// `KVM_GET_TSC_KHZ` works (`KVM_CAP_GET_TSC_KHZ`).
    pub tsc_khz_readable: bool,
    /// `KVM_SET_TSC_KHZ` can scale the guest TSC (`KVM_CAP_TSC_CONTROL`).
    pub tsc_scaling: bool,
}

impl VcpuCaps {
    /// Asks KVM (the system fd `kvm` and the VM fd `vm`).
    pub(crate) fn probe(kvm: &kvm_ioctls::Kvm, vm: &VmFd) -> Self {
        let xsave_bytes = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
        VcpuCaps {
            xsave_extra_words: xsave::extra_words(usize::try_from(xsave_bytes).unwrap_or(0)),
            tsc_khz_readable: kvm.check_extension(kvm_ioctls::Cap::GetTscKhz),
            tsc_scaling: kvm.check_extension(kvm_ioctls::Cap::TscControl),
        }
    }
}

fn call<T>(op: &'static str, r: std::result::Result<T, kvm_ioctls::Error>) -> Result<T> {
    r.map_err(|e| HypervisorError::call(op, e))
}

fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|_| HypervisorError::Call {
        op: "building MSR list",
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Reads every MSR in `indices` the vCPU has; KVM stops a batch at the
/// first MSR it cannot read, which is then skipped.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let read = call("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // A short batch: the entry after the last one read is unreadable.
        let skip = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[skip..];
    }
    Ok(out)
}

/// Writes `entries`, skipping (with a warning) any MSR KVM refuses.
fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<()> {
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let written = call("KVM_SET_MSRS", fd.set_msrs(&msr_list(chunk)?))?;
        if written < chunk.len() {
            tracing::warn!(
                "snapshot restore: KVM refused MSR {:#x}",
                chunk[written].index
            );
        }
        let skip = if written < chunk.len() {
            written + 1
        } else {
            written
        };
        rest = &rest[skip..];
    }
    Ok(())
}

/// Reads the whole state of a vCPU that is out of `KVM_RUN` (its pending
/// I/O completed).
pub(super) fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32], caps: &VcpuCaps) -> Result<VcpuState> {
    let (xsave, xsave_extra) = xsave::save(fd, caps.xsave_extra_words)?;
    Ok(VcpuState {
        mp_state: call("KVM_GET_MP_STATE", fd.get_mp_state())?,
        regs: call("KVM_GET_REGS", fd.get_regs())?,
        sregs: call("KVM_GET_SREGS", fd.get_sregs())?,
        xsave,
        xsave_extra,
        tsc_khz: tsc::save(fd, caps)?,
        xcrs: call("KVM_GET_XCRS", fd.get_xcrs())?,
        debug_regs: call("KVM_GET_DEBUGREGS", fd.get_debug_regs())?,
        lapic: call("KVM_GET_LAPIC", fd.get_lapic())?,
        msrs: get_msrs(fd, msr_indices)?,
        events: call("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?,
    })
}

/// Loads `state` into a configured (CPUID set) vCPU that has not run.
pub(super) fn restore_vcpu(fd: &VcpuFd, state: &VcpuState, caps: &VcpuCaps) -> Result<()> {
    tsc::restore(fd, state.tsc_khz, caps)?;
    call("KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state))?;
    call("KVM_SET_REGS", fd.set_regs(&state.regs))?;
    call("KVM_SET_SREGS", fd.set_sregs(&state.sregs))?;
    xsave::restore(fd, &state.xsave, &state.xsave_extra, caps.xsave_extra_words)?;
    call("KVM_SET_XCRS", fd.set_xcrs(&state.xcrs))?;
    call("KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debug_regs))?;
    call("KVM_SET_LAPIC", fd.set_lapic(&state.lapic))?;
    set_msrs(fd, &state.msrs)?;
    call("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&state.events))
}

fn get_irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    call("KVM_GET_IRQCHIP", fd.get_irqchip(&mut chip))?;
    Ok(chip)
}

/// Reads the VM-wide state; every vCPU must be paused.
pub(super) fn save_vm(fd: &VmFd) -> Result<VmState> {
    Ok(VmState {
        pic_master: get_irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: call("KVM_GET_PIT2", fd.get_pit2())?,
        clock: call("KVM_GET_CLOCK", fd.get_clock())?,
    })
}

/// Loads `state` into a VM whose irqchip and PIT exist and no vCPU runs.
pub(super) fn restore_vm(fd: &VmFd, state: &VmState) -> Result<()> {
    call("KVM_SET_PIT2", fd.set_pit2(&state.pit))?;
    let mut clock = state.clock;
    // Flags describe the source host's clock (TSC_STABLE, REALTIME...);
    // KVM_SET_CLOCK takes only the value here.
    clock.flags = 0;
    call("KVM_SET_CLOCK", fd.set_clock(&clock))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        call("KVM_SET_IRQCHIP", fd.set_irqchip(chip))?;
    }
    Ok(())
}
