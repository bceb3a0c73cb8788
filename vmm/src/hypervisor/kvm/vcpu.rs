//! KVM vCPU: runs the guest and translates exits.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuExit as KvmExit, VcpuFd};

use super::state::VcpuCaps;
use super::x86_64;
use crate::hypervisor::{EntryState, HypervisorError, Result, VcpuExit};

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    kvm: Arc<Kvm>,
    /// The MSRs a snapshot saves (KVM's MSR index list).
    msr_indices: Arc<Vec<u32>>,
    /// What KVM can save and restore here (xsave size, TSC scaling).
    caps: VcpuCaps,
}

impl KvmVcpu {
    pub(super) fn new(
        fd: VcpuFd,
        kvm: Arc<Kvm>,
        msr_indices: Arc<Vec<u32>>,
        caps: VcpuCaps,
    ) -> Self {
        KvmVcpu {
            fd,
            kvm,
            msr_indices,
            caps,
        }
    }
}

impl crate::hypervisor::Vcpu for KvmVcpu {
    fn configure(&mut self, id: u8, count: u8) -> Result<()> {
        x86_64::configure_cpuid(&self.kvm, &self.fd, id, count)?;
        x86_64::configure_msrs(&self.fd)?;
        x86_64::configure_fpu(&self.fd)?;
        x86_64::configure_lapic(&self.fd)
    }

    fn set_entry_state(&mut self, state: &EntryState) -> Result<()> {
        x86_64::set_entry_state(&self.fd, state)
    }

    fn run(&mut self) -> Result<VcpuExit<'_>> {
        // Raw pointer to the shared kvm_run page, read only for exits whose
        // variant borrows nothing from it.
        let run_page: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(HypervisorError::call("KVM_RUN", e)),
        };
        Ok(match exit {
            KvmExit::IoIn(port, data) => VcpuExit::IoIn(port, data),
            KvmExit::IoOut(port, data) => VcpuExit::IoOut(port, data),
            KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
            KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::SystemEvent(kind, _) => VcpuExit::SystemEvent(kind),
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::InternalError => {
                // SAFETY: the kvm_run page is mapped for the vCPU's lifetime and
                // KVM_EXIT_INTERNAL_ERROR fills its `internal` union member; the
                // InternalError variant holds no reference into the page.
                let suberror = unsafe { (*run_page).__bindgen_anon_1.internal.suberror };
                VcpuExit::InternalError(suberror)
            }
            KvmExit::FailEntry(reason, _cpu) => VcpuExit::FailEntry(reason),
            other => VcpuExit::Other(format!("{other:?}")),
        })
    }

    fn set_immediate_exit(&mut self, exit: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(exit));
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn describe_state(&self) -> String {
        x86_64::describe_state(&self.fd)
    }

    fn save_state(&self) -> Result<crate::hypervisor::VcpuState> {
        super::state::save_vcpu(&self.fd, &self.msr_indices, &self.caps)
    }

    fn restore_state(&mut self, state: &crate::hypervisor::VcpuState) -> Result<()> {
        super::state::restore_vcpu(&self.fd, state, &self.caps)
    }
}
