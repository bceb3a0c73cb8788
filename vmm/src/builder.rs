//! From a [`VmConfig`] to a running [`MicroVm`].
//!
//! Order: hypervisor VM and interrupt controller, guest RAM, legacy devices,
//! virtio devices (their command-line fragments), command line, kernel and
//! boot structures, vCPUs ([`build`]); then the device event loop and the
//! vCPU threads ([`BuiltVm::start`]). `kiln-vmm` drops its privileges in
//! between.
//!
//! A restore (`config.restore`) reads and checks the snapshot first, maps
//! its memory instead of creating it, attaches the same devices and loads
//! their saved state instead of loading a kernel, and loads the VM and
//! vCPU state instead of an entry state.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::boot::{self, cmdline, BootSpec};
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{BootTimer, Serial, SerialError, SerialSnapshot, I8042};
use crate::devices::virtio::blk::{Blk, BlkError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevices, VirtioError};
use crate::hypervisor::{self, HypervisorError, Vm};
use crate::layout::{
    BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_IRQ, SERIAL_PORT_BASE,
};
use crate::memory::{self, MemoryError};
use crate::seccomp::{SeccompError, ThreadFilters, ThreadKind};
use crate::snapshot::control::ControlServer;
use crate::snapshot::{self, SnapshotError, Snapshotter, VmSnapshot};
use crate::vcpu::pause::PauseCtl;
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
    /// The snapshot to restore is unusable or does not fit the config.
    #[error("restore: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The control socket could not be set up.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
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
    pause: Arc<PauseCtl>,
    virtio: VirtioDevices,
    serial: Option<Arc<Mutex<Serial>>>,
    serial_log: Option<PathBuf>,
    socket: Option<SocketGuard>,
    control: Option<(ControlServer, SocketGuard)>,
    snapshot_files: Option<snapshot::SnapshotFiles>,
    cmdline: String,
    mem_bytes: u64,
    vm: Arc<dyn Vm>,
    mem: memory::GuestMemoryMmap,
}

/// Builds the VM described by `config` without starting any thread: opens
/// `/dev/kvm`, the kernel, initramfs, drives and serial log, and binds the
/// vsock socket.
pub fn build(config: &VmConfig, vmm_start: Instant) -> Result<BuiltVm, BuildError> {
    config.validate()?;
    // A restore refuses a bad snapshot before anything is built.
    let restore = match &config.restore {
        Some(dir) => {
            let (snapshot, mem) = snapshot::load(dir)?;
            snapshot.check_fits(config.vcpus, config.mem_bytes())?;
            tracing::debug!("step: snapshot read, checked and mapped");
            Some((snapshot, mem))
        }
        None => None,
    };
    let hv = hypervisor::open_default()?;
    let vm: Arc<dyn Vm> = Arc::from(hv.create_vm()?);
    vm.create_irq_controller()?;
    tracing::debug!("step: kvm vm and irqchip created");
    let (snapshot, mem) = match restore {
        Some((snapshot, mem)) => (Some(snapshot), mem),
        None => {
            let (mem, backing) = memory::create(config.mem_bytes(), config.huge_pages)?;
            tracing::debug!("guest RAM on {backing:?}");
            (None, mem)
        }
    };
    // SAFETY: `mem` is moved into the returned BuiltVm and then MicroVm (or
    // dropped on error after `vm`, which is declared before it is used by
    // any vCPU); the handle drops the VM before the memory.
    unsafe { memory::register(vm.as_ref(), &mem)? };
    tracing::debug!("step: guest memory registered");

    let exit = Arc::new(ExitState::new());
    let clock = Arc::new(BootClock::new(vmm_start));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_state = snapshot.as_ref().and_then(|s| s.serial.as_ref());
    let legacy = Legacy {
        exit: &exit,
        clock: &clock,
        serial_state,
    };
    let serial = attach_legacy(config, vm.as_ref(), &mut pio, &mut mmio, &legacy)?;

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
    let snapshot_files = config
        .control
        .as_ref()
        .map(|c| snapshot::SnapshotFiles::open(&c.snapshot_dir))
        .transpose()?;
    let control = match &config.control {
        Some(c) => Some((
            ControlServer::new(bind_control(&c.socket)?),
            SocketGuard(c.socket.clone()),
        )),
        None => None,
    };

    tracing::debug!("step: devices attached");
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let pause = Arc::new(PauseCtl::new(config.vcpus));
    let shared = Shared {
        pio: &pio,
        mmio: &mmio,
        exit: &exit,
        clock: &clock,
        pause: &pause,
        test_seccomp_violation: config.jail.test_seccomp_violation,
    };
    let mut contexts = create_vcpus(vm.as_ref(), config.vcpus, &shared)?;
    tracing::debug!("step: vcpus created");
    let cmdline = match &snapshot {
        Some(snapshot) => {
            restore_state(snapshot, vm.as_ref(), &virtio, &mut contexts)?;
            tracing::debug!("step: state restored (devices, vm, vcpus)");
            snapshot.cmdline.clone()
        }
        None => {
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
            // Only vCPU 0 gets the entry state (the others wait for the
            // guest's INIT/SIPI in the in-kernel local APIC).
            if let Some(ctx) = contexts.first_mut() {
                ctx.vcpu.set_entry_state(&boot.entry)?;
            }
            cmdline
        }
    };
    Ok(BuiltVm {
        exit,
        clock,
        contexts,
        pause,
        virtio,
        serial,
        serial_log: config.serial_log.clone(),
        socket,
        control,
        snapshot_files,
        cmdline,
        mem_bytes: config.mem_bytes(),
        vm,
        mem,
    })
}

/// Loads a snapshot into a built VM: device state (each device activates
/// on its saved rings and learns it was restored), then the interrupt
/// controllers and clocks, then every vCPU.
fn restore_state(
    snapshot: &VmSnapshot,
    vm: &dyn Vm,
    virtio: &VirtioDevices,
    contexts: &mut [VcpuContext],
) -> Result<(), BuildError> {
    let transports = virtio.transports();
    if transports.len() != snapshot.devices.len() {
        return Err(SnapshotError::Mismatch(format!(
            "the snapshot has {} virtio devices, the config {}",
            snapshot.devices.len(),
            transports.len()
        ))
        .into());
    }
    for (index, (transport, state)) in transports.iter().zip(&snapshot.devices).enumerate() {
        let mut transport = transport.lock().expect("virtio transport lock poisoned");
        transport
            .restore(state)
            .map_err(|source| SnapshotError::Device { index, source })?;
        transport
            .device()
            .lock()
            .expect("virtio device lock poisoned")
            .after_snapshot();
    }
    vm.restore_state(&snapshot.vm)?;
    for (ctx, state) in contexts.iter_mut().zip(&snapshot.vcpus) {
        ctx.vcpu.restore_state(state)?;
    }
    Ok(())
}

/// Binds the control socket, owner-only.
fn bind_control(path: &Path) -> Result<UnixListener, BuildError> {
    claim_socket_path(path)?;
    let err = |source| BuildError::Control {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

impl BuiltVm {
    /// Starts the device event loop, then the vCPU threads; with `filters`
    /// each thread installs its seccomp filter before it does anything.
    pub fn start(self, filters: Option<Arc<ThreadFilters>>) -> Result<MicroVm, BuildError> {
        let transports = self.virtio.transports().to_vec();
        let event_loop = self.virtio.spawn(filters.clone())?;
        tracing::debug!("step: device event loop started");
        self.clock.mark_built();
        let vcpus = Arc::new(VcpuThreads::default());
        let snapshotter = Arc::new(Snapshotter {
            vm: Arc::clone(&self.vm),
            mem: self.mem.clone(),
            mem_bytes: self.mem_bytes,
            cmdline: self.cmdline.clone(),
            transports,
            serial: self.serial,
            pause: self.pause,
            vcpus: Arc::clone(&vcpus),
            gate: event_loop.gate(),
            exit: Arc::clone(&self.exit),
            files: Mutex::new(self.snapshot_files),
        });
        let (control, control_socket) = match self.control {
            Some((server, guard)) => {
                let fd = server.listener_fd().map_err(|source| BuildError::Control {
                    path: guard.0.clone(),
                    source,
                })?;
                (Some((server, fd)), Some(guard.disarm()))
            }
            None => (None, None),
        };
        let mut handle = MicroVm {
            exit: self.exit,
            clock: self.clock,
            vcpus,
            dump: event_loop.dump_trigger(),
            event_loop: Mutex::new(Some(event_loop)),
            serial_log: self.serial_log,
            vsock_uds: self.socket.map(SocketGuard::disarm),
            control_socket,
            control_listener: None,
            snapshotter: Arc::clone(&snapshotter),
            cmdline: self.cmdline,
            finishing: Mutex::new(()),
            _vm: self.vm,
            _mem: self.mem,
        };
        if let Some((server, fd)) = control {
            handle.control_listener = Some(fd);
            // Detached: it ends when `finish` shuts its listener down.
            crate::seccomp::spawn_filtered(
                "kiln-control".into(),
                ThreadKind::Control,
                filters.clone(),
                move || server.run(snapshotter),
            )?;
        }
        // On error the handle's Drop stops the threads already started.
        handle
            .vcpus
            .spawn(self.contexts, filters)
            .map_err(BuildError::Threads)?;
        tracing::debug!("step: vcpu threads started");
        Ok(handle)
    }
}

/// What the legacy devices share with the VM, and a restore's serial state.
struct Legacy<'a> {
    exit: &'a Arc<ExitState>,
    clock: &'a Arc<BootClock>,
    serial_state: Option<&'a SerialSnapshot>,
}

/// COM1 (when configured, from the snapshot's state on a restore), the
/// i8042 and the boot timer; returns COM1 for snapshots. The i8042 and the
/// boot timer hold no state a guest could see, so snapshots skip them.
fn attach_legacy(
    config: &VmConfig,
    vm: &dyn Vm,
    pio: &mut Bus,
    mmio: &mut Bus,
    legacy: &Legacy<'_>,
) -> Result<Option<Arc<Mutex<Serial>>>, BuildError> {
    let (exit, clock) = (legacy.exit, legacy.clock);
    let mut com1 = None;
    if let Some(path) = &config.serial_log {
        let (serial, irq) = Serial::new(path, legacy.serial_state)?;
        vm.register_irqfd(&irq, SERIAL_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
        com1 = Some(serial);
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
    Ok(com1)
}

/// What every vCPU context shares.
struct Shared<'a> {
    pio: &'a Arc<Bus>,
    mmio: &'a Arc<Bus>,
    exit: &'a Arc<ExitState>,
    clock: &'a Arc<BootClock>,
    pause: &'a Arc<PauseCtl>,
    test_seccomp_violation: bool,
}

/// Creates and configures (CPUID, MSRs, FPU, LAPIC) every vCPU.
fn create_vcpus(
    vm: &dyn Vm,
    count: u8,
    shared: &Shared<'_>,
) -> Result<Vec<VcpuContext>, BuildError> {
    (0..count)
        .map(|id| {
            let mut vcpu = vm.create_vcpu(id)?;
            vcpu.configure(id, count)?;
            Ok(VcpuContext {
                id,
                vcpu,
                pio: Arc::clone(shared.pio),
                mmio: Arc::clone(shared.mmio),
                exit: Arc::clone(shared.exit),
                clock: Arc::clone(shared.clock),
                pause: Arc::clone(shared.pause),
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
