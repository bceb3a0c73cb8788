//! The only place that talks to a hypervisor API.
//!
//! The rest of the VMM programs against the [`Hypervisor`], [`Vm`] and [`Vcpu`]
//! traits; KVM lives in [`kvm`], and another backend (MSHV) fits beside it
//! without touching device or boot code.

pub mod kvm;

pub use kvm::state::{VcpuState, VmState};

use std::os::fd::RawFd;

use vmm_sys_util::eventfd::EventFd;

/// Errors from a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The hypervisor device node could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device node path.
        path: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backend lacks a capability kiln needs.
    #[error("{backend} lacks required capability {capability}")]
    MissingCapability {
        /// Backend name.
        backend: &'static str,
        /// Capability name.
        capability: &'static str,
    },
    /// The snapshot's vCPU state does not fit this host.
    #[error("the snapshot does not fit this host: {0}")]
    Incompatible(String),
    /// A hypervisor call failed.
    #[error("{op} failed: {source}")]
    Call {
        /// What was being done.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HypervisorError {
    /// Builds a [`HypervisorError::Call`] from an errno-carrying error.
    pub(crate) fn call(op: &'static str, err: impl Into<std::io::Error>) -> Self {
        HypervisorError::Call {
            op,
            source: err.into(),
        }
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, HypervisorError>;

/// A hypervisor: the factory for VMs.
pub trait Hypervisor: Send + Sync {
    /// Short backend name, for logs and `kiln doctor`.
    fn name(&self) -> &'static str;
    /// Creates an empty VM (no memory, no vCPUs).
    fn create_vm(&self) -> Result<Box<dyn Vm>>;
}

/// Where a write to an ioeventfd-registered address is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    /// Port I/O address.
    Pio(u64),
    /// MMIO address.
    Mmio(u64),
}

/// A virtual machine: memory, interrupt controller and vCPUs.
pub trait Vm: Send + Sync {
    /// Maps host memory at `host_addr` into the guest at `guest_addr`.
    ///
    /// # Safety
    /// `host_addr..host_addr+size` must be a valid mapping that outlives the VM
    /// and is not unmapped while the VM can access it.
    unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<()>;
    /// Creates the in-kernel interrupt controllers and timers the arch needs.
    fn create_irq_controller(&self) -> Result<()>;
    /// Creates vCPU number `id`.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;
    /// Makes a write to `fd` raise interrupt line `gsi` in the guest.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Signals `fd` when the guest writes to `addr`, without a vCPU exit.
    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: u32) -> Result<()>;
    /// The interrupt controllers and clocks, for a snapshot (every vCPU paused).
    fn save_state(&self) -> Result<VmState>;
    /// Loads a snapshot's interrupt controllers and clocks (no vCPU running).
    fn restore_state(&self, state: &VmState) -> Result<()>;
}

/// How a vCPU starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, flat segments, paging off (PVH entry).
    Protected32,
    /// 64-bit long mode with identity page tables rooted at `pml4` (Linux
    /// 64-bit boot protocol).
    Long64 {
        /// Guest physical address of the PML4 table.
        pml4: u64,
    },
}

/// Register state a vCPU starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// `rbx` (PVH: start_info address).
    pub rbx: u64,
    /// `rsi` (64-bit boot protocol: boot_params address).
    pub rsi: u64,
}

/// Why `Vcpu::run` returned.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// Guest read from an I/O port; fill `data`.
    IoIn(u16, &'a mut [u8]),
    /// Guest wrote to an I/O port.
    IoOut(u16, &'a [u8]),
    /// Guest read from unbacked memory; fill `data`.
    MmioRead(u64, &'a mut [u8]),
    /// Guest wrote to unbacked memory.
    MmioWrite(u64, &'a [u8]),
    /// Guest executed HLT with interrupts the VMM must handle.
    Hlt,
    /// Guest triple-faulted or asked for a reset.
    Shutdown,
    /// Guest asked the platform to reset or power off.
    SystemEvent(u32),
    /// The run was interrupted by a signal or an immediate-exit request.
    Interrupted,
    /// The hypervisor could not emulate something the guest did.
    InternalError(u32),
    /// Entering the guest failed (invalid state).
    FailEntry(u64),
    /// Any other exit, with its raw reason.
    Other(String),
}

/// One virtual CPU. Owned by exactly one thread while it runs.
pub trait Vcpu: Send {
    /// Sets up CPUID, MSRs, FPU and local APIC for vCPU `id` of `count`.
    fn configure(&mut self, id: u8, count: u8) -> Result<()>;
    /// Loads the register state the guest starts from.
    fn set_entry_state(&mut self, state: &EntryState) -> Result<()>;
    /// Runs the guest until the next exit the VMM must handle.
    fn run(&mut self) -> Result<VcpuExit<'_>>;
    /// Asks the next (or current, after a signal) `run` to return at once.
    fn set_immediate_exit(&mut self, exit: bool);
    /// The vCPU file descriptor, for diagnostics.
    fn raw_fd(&self) -> RawFd;
    /// The vCPU's registers and pending events in one line, for the log
    /// when the guest crashes (a triple fault leaves no guest log).
    fn describe_state(&self) -> String;
    /// The whole vCPU state, for a snapshot; call only between two runs,
    /// after a run that returned [`VcpuExit::Interrupted`] (pending I/O done).
    fn save_state(&self) -> Result<VcpuState>;
    /// Loads a snapshot's vCPU state, after [`Vcpu::configure`] and before
    /// the first run.
    fn restore_state(&mut self, state: &VcpuState) -> Result<()>;
}

/// Opens the default hypervisor of this host (KVM).
pub fn open_default() -> Result<Box<dyn Hypervisor>> {
    Ok(Box::new(kvm::KvmHypervisor::open()?))
}
