//! From a [`VmConfig`] to a running [`MicroVm`].
//!
//! Order: hypervisor VM and interrupt controller, guest RAM, legacy devices,
//! virtio devices (their command-line fragments), command line, kernel and
//! boot structures, vCPUs ([`build`]); then the device event loop and the
//! vCPU threads ([`BuiltVm::start`]). `kiln-vmm` drops its privileges in
//! between.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::boot::{self, cmdline, BootSpec};
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{BootTimer, Serial, SerialError, I8042};
use crate::devices::virtio::blk::{Blk, BlkError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevices, VirtioError};
use crate::hypervisor::{self, EntryState, HypervisorError, Vm};
use crate::layout::{
    BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_IRQ, SERIAL_PORT_BASE,
};
use crate::memory::{self, MemoryError};
use crate::seccomp::{SeccompError, ThreadFilters};
use crate::vcpu::run_loop::VcpuContext;
use crate::vcpu::threads::VcpuThreads;
use crate::vm::exit::ExitState;
use crate::vm::timings::BootClock;
use crate::vm::MicroVm;

/// Number of 16550 registers.
const SERIAL_PORT_LEN: u64 = 8;

/// Errors from building a VM. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is out of range.
    #[error("invalid vm config: {0}")]
    Config(#[from] ConfigError),
    /// The hypervisor refused a step.
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] HypervisorError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initramfs or boot structures could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The serial port could not be set up.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// Two devices claim the same addresses.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A virtio device could not be set up.
    #[error("virtio: {0}")]
    Virtio(#[from] VirtioError),
    /// The vsock device could not be set up.
    #[error("vsock: {0}")]
    Vsock(#[from] VsockError),
    /// A drive could not be opened (missing, unreadable, too small, locked).
    #[error(transparent)]
    Drive(#[from] BlkError),
    /// Another process is serving on the vsock socket path.
    #[error("vsock socket {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// The vsock socket path exists and is not a socket, or cannot be checked.
    #[error("vsock socket path {path}: {source}")]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The vCPU threads could not be started.
    #[error("cannot start vcpu threads: {0}")]
    Threads(#[source] io::Error),
    /// The seccomp filters could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Builds and starts the VM described by `config`; boot times are measured
/// from now.
pub fn start(config: &VmConfig) -> Result<MicroVm, BuildError> {
    start_at(config, Instant::now())
}

/// Builds and starts the VM; boot times are measured from `vmm_start`
/// (usually the first instant of `main`). Its threads run under seccomp
/// filters when `config.jail` asks for them.
pub fn start_at(config: &VmConfig, vmm_start: Instant) -> Result<MicroVm, BuildError> {
    let filters = if config.jail.seccomp_on() && crate::seccomp::kernel_supports_seccomp() {
        Some(Arc::new(ThreadFilters::for_vmm()?))
    } else {
        None
    };
    build(config, vmm_start)?.start(filters)
}

/// A VM whose memory, devices, kernel and vCPUs are ready and whose files
/// are open, but that runs no thread yet: the moment for `kiln-vmm` to
/// drop its privileges before any guest code runs.
pub struct BuiltVm {
    exit: Arc<ExitState>,
    clock: Arc<BootClock>,
    contexts: Vec<VcpuContext>,
    virtio: VirtioDevices,
    serial_log: Option<PathBuf>,
    socket: Option<SocketGuard>,
    cmdline: String,
    vm: Box<dyn Vm>,
    mem: memory::GuestMemoryMmap,
}

/// Builds the VM described by `config` without starting any thread: opens
/// `/dev/kvm`, the kernel, initramfs, drives and serial log, and binds the
/// vsock socket.
pub fn build(config: &VmConfig, vmm_start: Instant) -> Result<BuiltVm, BuildError> {
    config.validate()?;
    let hv = hypervisor::open_default()?;
    let vm = hv.create_vm()?;
    vm.create_irq_controller()?;
    let mem = memory::create(config.mem_bytes())?;
    // SAFETY: `mem` is moved into the returned BuiltVm and then MicroVm (or
    // dropped on error after `vm`, which is declared before it is used by
    // any vCPU); the handle drops the VM before the memory.
    unsafe { memory::register(vm.as_ref(), &mem)? };

    let exit = Arc::new(ExitState::new());
    let clock = Arc::new(BootClock::new(vmm_start));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    attach_legacy(config, vm.as_ref(), &mut pio, &mut mmio, &exit, &clock)?;

    let mut socket = None;
    let mut virtio = VirtioDevices::new(mem.clone());
    let mut fragments = Vec::new();
    if let Some(vsock) = &config.vsock {
        claim_socket_path(&vsock.uds_path)?;
        let device = Vsock::new(u64::from(vsock.guest_cid), vsock.uds_path.clone())?;
        socket = Some(SocketGuard(vsock.uds_path.clone()));
        fragments.push(virtio.attach(vm.as_ref(), &mut mmio, fragments.len(), device)?);
    }
    fragments.push(virtio.attach(vm.as_ref(), &mut mmio, fragments.len(), Rng::new()?)?);
    // Drives come last so the guest names them /dev/vda, /dev/vdb, ... in order.
    for drive in &config.drives {
        let device = Blk::open(&drive.path, drive.read_only)?;
        fragments.push(virtio.attach(vm.as_ref(), &mut mmio, fragments.len(), device)?);
    }

    let cmdline = cmdline::build(
        config.serial_log.is_some(),
        &fragments,
        &config.cmdline_extra,
    )?;
    let spec = BootSpec {
        kernel: &config.kernel,
        initramfs: config.initramfs.as_deref(),
        cmdline: &cmdline,
        vcpus: config.vcpus,
    };
    let boot = boot::load(&mem, &spec)?;
    tracing::debug!("kernel loaded ({:?}), cmdline: {cmdline}", boot.protocol);

    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let shared = Shared {
        pio: &pio,
        mmio: &mmio,
        exit: &exit,
        clock: &clock,
        test_seccomp_violation: config.jail.test_seccomp_violation,
    };
    let contexts = create_vcpus(vm.as_ref(), config.vcpus, &boot.entry, &shared)?;
    Ok(BuiltVm {
        exit,
        clock,
        contexts,
        virtio,
        serial_log: config.serial_log.clone(),
        socket,
        cmdline,
        vm,
        mem,
    })
}

impl BuiltVm {
    /// Starts the device event loop, then the vCPU threads; with `filters`
    /// each thread installs its seccomp filter before it does anything.
    pub fn start(self, filters: Option<Arc<ThreadFilters>>) -> Result<MicroVm, BuildError> {
        let event_loop = self.virtio.spawn(filters.clone())?;
        self.clock.mark_built();
        let handle = MicroVm {
            exit: self.exit,
            clock: self.clock,
            vcpus: VcpuThreads::default(),
            dump: event_loop.dump_trigger(),
            event_loop: Mutex::new(Some(event_loop)),
            serial_log: self.serial_log,
            vsock_uds: self.socket.map(SocketGuard::disarm),
            cmdline: self.cmdline,
            finishing: Mutex::new(()),
            _vm: self.vm,
            _mem: self.mem,
        };
        // On error the handle's Drop stops the threads already started.
        handle
            .vcpus
            .spawn(self.contexts, filters)
            .map_err(BuildError::Threads)?;
        Ok(handle)
    }
}

/// COM1 (when configured), the i8042 and the boot timer.
fn attach_legacy(
    config: &VmConfig,
    vm: &dyn Vm,
    pio: &mut Bus,
    mmio: &mut Bus,
    exit: &Arc<ExitState>,
    clock: &Arc<BootClock>,
) -> Result<(), BuildError> {
    if let Some(path) = &config.serial_log {
        let (serial, irq) = Serial::new(path)?;
        vm.register_irqfd(&irq, SERIAL_IRQ)?;
        pio.insert(
            Arc::new(Mutex::new(serial)),
            SERIAL_PORT_BASE,
            SERIAL_PORT_LEN,
        )?;
    }
    pio.insert(
        Arc::new(Mutex::new(I8042::new(Arc::clone(exit)))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    if config.boot_timer {
        let timer = BootTimer::new(Arc::clone(clock), Arc::clone(exit));
        mmio.insert(
            Arc::new(Mutex::new(timer)),
            BOOT_TIMER_ADDR,
            BOOT_TIMER_SIZE,
        )?;
    }
    Ok(())
}

/// What every vCPU context shares.
struct Shared<'a> {
    pio: &'a Arc<Bus>,
    mmio: &'a Arc<Bus>,
    exit: &'a Arc<ExitState>,
    clock: &'a Arc<BootClock>,
    test_seccomp_violation: bool,
}

/// Creates and configures every vCPU; only vCPU 0 gets the entry state (the
/// others wait for the guest's INIT/SIPI in the in-kernel local APIC).
fn create_vcpus(
    vm: &dyn Vm,
    count: u8,
    entry: &EntryState,
    shared: &Shared<'_>,
) -> Result<Vec<VcpuContext>, BuildError> {
    (0..count)
        .map(|id| {
            let mut vcpu = vm.create_vcpu(id)?;
            vcpu.configure(id, count)?;
            if id == 0 {
                vcpu.set_entry_state(entry)?;
            }
            Ok(VcpuContext {
                id,
                vcpu,
                pio: Arc::clone(shared.pio),
                mmio: Arc::clone(shared.mmio),
                exit: Arc::clone(shared.exit),
                clock: Arc::clone(shared.clock),
                test_seccomp_violation: shared.test_seccomp_violation && id == 0,
            })
        })
        .collect()
}

/// Makes `path` free for a new listening socket: refuses a live socket of
/// another process and anything that is not a socket; removes a stale one.
pub fn claim_socket_path(path: &Path) -> Result<(), BuildError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BuildError::SocketPath {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BuildError::SocketPath {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BuildError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| BuildError::SocketPath {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(BuildError::SocketPath {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes a socket file this VM created if the build fails after it.
struct SocketGuard(PathBuf);

impl SocketGuard {
    fn disarm(self) -> PathBuf {
        let path = self.0.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn socket_path_claiming() {
        let dir = std::env::temp_dir().join(format!("kiln-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        claim_socket_path(&path).unwrap();
        // Live socket: refused, left in place.
        let listener = UnixListener::bind(&path).unwrap();
        assert!(matches!(
            claim_socket_path(&path),
            Err(BuildError::SocketInUse(_))
        ));
        assert!(path.exists());
        // Stale socket: removed.
        drop(listener);
        claim_socket_path(&path).unwrap();
        assert!(!path.exists());
        // Not a socket: refused, left in place.
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            claim_socket_path(&path),
            Err(BuildError::SocketPath { .. })
        ));
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
