//! KVM backend of the hypervisor traits.

pub mod seccomp;
pub mod state;
mod vcpu;
mod x86_64;

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{HypervisorError, IoEventAddress, Result};

pub use vcpu::KvmVcpu;

/// Path of the KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities kiln cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Guest physical address of the TSS pages KVM needs on Intel (3 pages, below 4 GiB,
/// inside the MMIO gap so they never overlap RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// The KVM hypervisor (`/dev/kvm`).
pub struct KvmHypervisor {
    kvm: Arc<Kvm>,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks the capabilities kiln relies on.
    pub fn open() -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| HypervisorError::Open {
            path: KVM_PATH,
            source: e.into(),
        })?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(HypervisorError::MissingCapability {
                    backend: "kvm",
                    capability: name,
                });
            }
        }
        Ok(KvmHypervisor { kvm: Arc::new(kvm) })
    }

    /// KVM API version reported by the kernel.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }
}

impl super::Hypervisor for KvmHypervisor {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn create_vm(&self) -> Result<Box<dyn super::Vm>> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| HypervisorError::call("KVM_CREATE_VM", e))?;
        // The MSRs KVM can save and restore, asked once per VM (the vCPU
        // threads cannot reach /dev/kvm under their seccomp filter).
        let msr_indices = self
            .kvm
            .get_msr_index_list()
            .map_err(|e| HypervisorError::call("KVM_GET_MSR_INDEX_LIST", e))?
            .as_slice()
            .to_vec();
        let vcpu_caps = state::VcpuCaps::probe(&self.kvm, &fd);
        Ok(Box::new(KvmVm {
            kvm: Arc::clone(&self.kvm),
            fd,
            msr_indices: Arc::new(msr_indices),
            vcpu_caps,
        }))
    }
}

/// A KVM virtual machine.
pub struct KvmVm {
    kvm: Arc<Kvm>,
    fd: VmFd,
    msr_indices: Arc<Vec<u32>>,
    vcpu_caps: state::VcpuCaps,
}

impl super::Vm for KvmVm {
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range is a live mapping that
        // outlives the VM (this function's own safety contract).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| HypervisorError::call("KVM_SET_USER_MEMORY_REGION", e))
    }

    fn create_irq_controller(&self) -> Result<()> {
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(|e| HypervisorError::call("KVM_SET_TSS_ADDR", e))?;
        self.fd
            .create_irq_chip()
            .map_err(|e| HypervisorError::call("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(|e| HypervisorError::call("KVM_CREATE_PIT2", e))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn super::Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| HypervisorError::call("KVM_CREATE_VCPU", e))?;
        Ok(Box::new(KvmVcpu::new(
            fd,
            Arc::clone(&self.kvm),
            Arc::clone(&self.msr_indices),
            self.vcpu_caps,
        )))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|e| HypervisorError::call("KVM_IRQFD", e))
    }

    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: u32) -> Result<()> {
        let addr = match addr {
            IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        };
        self.fd
            .register_ioevent(fd, &addr, datamatch)
            .map_err(|e| HypervisorError::call("KVM_IOEVENTFD", e))
    }

    fn save_state(&self) -> Result<super::VmState> {
        state::save_vm(&self.fd)
    }

    fn restore_state(&self, state: &super::VmState) -> Result<()> {
        state::restore_vm(&self.fd, state)
    }
}
