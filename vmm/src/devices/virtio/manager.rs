//! Wiring virtio devices into a VM and running their event loop.
//!
//! ```ignore
//! let mut virtio = VirtioDevices::new(mem.clone());
//! cmdline.push(virtio.attach(vm, &mut mmio_bus, 0, Rng::new()?)?);
//! cmdline.push(virtio.attach(vm, &mut mmio_bus, 1, Vsock::new(3, uds_path)?)?);
//! let event_loop = virtio.spawn(None)?;   // before the vCPUs start
//! // ... run the VM ...
//! event_loop.stop()?;
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::Bus;
use crate::devices::virtio::transport::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::{VirtioDevice, VirtioError};
use crate::hypervisor::{IoEventAddress, Vm};
use crate::layout::{
    IRQ_MAX, MMIO_SIZE, MMIO_START, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::seccomp::{self, ThreadFilters, ThreadKind};

/// The virtio devices of one VM, before their event loop starts.
pub struct VirtioDevices {
    mem: GuestMemoryMmap,
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// Where device window `index` lives: (MMIO base, IRQ line).
pub fn window(index: usize) -> Result<(u64, u32), VirtioError> {
    let irq = u32::try_from(index)
        .ok()
        .and_then(|i| VIRTIO_IRQ_BASE.checked_add(i))
        .filter(|&irq| irq <= IRQ_MAX)
        .ok_or(VirtioError::InvalidIndex(index))?;
    let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
    if base + VIRTIO_MMIO_SIZE > MMIO_START + MMIO_SIZE {
        return Err(VirtioError::InvalidIndex(index));
    }
    Ok((base, irq))
}

/// The kernel command-line fragment that declares a virtio-mmio device
/// (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
pub fn cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

impl VirtioDevices {
    /// No devices yet; `mem` is the guest RAM their queues live in.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        VirtioDevices {
            mem,
            devices: Vec::new(),
            transports: Vec::new(),
        }
    }

    /// Every device's transport, in window order (for snapshots).
    pub fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.transports
    }

    /// Places `device` in virtio-mmio window `index` (base
    /// `VIRTIO_MMIO_BASE + index * 0x1000`, IRQ `VIRTIO_IRQ_BASE + index`),
    /// registers its irqfd and one ioeventfd per queue, and returns the
    /// kernel command-line fragment that declares it.
    pub fn attach<D: VirtioDevice + 'static>(
        &mut self,
        vm: &dyn Vm,
        bus: &mut Bus,
        index: usize,
        device: D,
    ) -> Result<String, VirtioError> {
        let (base, irq) = window(index)?;
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(self.mem.clone(), device.clone())?;
        vm.register_irqfd(transport.interrupt().eventfd(), irq)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            let datamatch = u32::try_from(i).map_err(|_| VirtioError::InvalidIndex(index))?;
            vm.register_ioevent(evt, IoEventAddress::Mmio(base + QUEUE_NOTIFY), datamatch)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        self.devices.push(device);
        self.transports.push(transport);
        Ok(cmdline_fragment(base, irq))
    }

    /// Starts the event loop thread that serves every attached device;
    /// with `filters` it runs under the virtio seccomp filter.
    pub fn spawn(self, filters: Option<Arc<ThreadFilters>>) -> Result<EventLoop, VirtioError> {
        let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()
            .map_err(VirtioError::EventManager)?;
        let dump = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        manager.add_subscriber(Box::new(DumpSubscriber {
            evt: dump.try_clone().map_err(VirtioError::EventFd)?,
            devices: self.devices.clone(),
        }));
        for device in self.devices {
            manager.add_subscriber(Box::new(DeviceSubscriber(device)));
        }
        let gate = Arc::new(LoopGate::new()?);
        manager.add_subscriber(Box::new(GateSubscriber(gate.clone())));
        let exit = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let stop = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Box::new(ExitSubscriber {
            evt: exit.try_clone().map_err(VirtioError::EventFd)?,
            stop: stop.clone(),
        }));
        let thread = seccomp::spawn_filtered(
            "kiln-virtio".into(),
            ThreadKind::Virtio,
            filters,
            move || {
                while !stop.load(Ordering::SeqCst) {
                    manager.run().map_err(VirtioError::EventManager)?;
                }
                Ok(())
            },
        )
        .map_err(|e| VirtioError::Thread(std::io::Error::other(e)))?;
        Ok(EventLoop {
            exit,
            dump: DumpTrigger(Arc::new(dump)),
            gate,
            thread: Some(thread),
        })
    }
}

/// Asks the event loop to log every device's state ([`VirtioDevice::describe`]);
/// cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DumpTrigger(Arc<EventFd>);

impl DumpTrigger {
    /// Requests one dump; the event loop logs it between two events.
    pub fn request(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::warn!("virtio: cannot request a state dump: {e}");
        }
    }
}

/// The running device event loop. Dropping it stops the loop too.
pub struct EventLoop {
    exit: EventFd,
    dump: DumpTrigger,
    gate: Arc<LoopGate>,
    thread: Option<JoinHandle<Option<Result<(), VirtioError>>>>,
}

impl EventLoop {
    /// A handle that asks this loop for a state dump.
    pub fn dump_trigger(&self) -> DumpTrigger {
        self.dump.clone()
    }

    /// A handle that holds this loop between two events (for snapshots).
    pub fn gate(&self) -> Arc<LoopGate> {
        self.gate.clone()
    }

    /// Stops the loop and waits for its thread; returns the loop's error, if any.
    pub fn stop(mut self) -> Result<(), VirtioError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), VirtioError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A failed write leaves the loop running; join would hang, so report it.
        self.exit.write(1).map_err(VirtioError::EventFd)?;
        // `None`: the thread never ran (its filter failed, reported at spawn).
        thread
            .join()
            .map_err(|_| VirtioError::ThreadPanicked)?
            .unwrap_or(Ok(()))
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::error!("virtio event loop: {e}");
        }
    }
}

/// Runs a shared device's event handling under its lock.
struct DeviceSubscriber(Arc<Mutex<dyn VirtioDevice>>);

impl MutEventSubscriber for DeviceSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0
            .lock()
            .expect("virtio device lock poisoned")
            .process(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.0
            .lock()
            .expect("virtio device lock poisoned")
            .init(ops);
    }
}

/// Logs every device's state when its eventfd is signalled. It runs on the
/// event loop, so no device is mid-way through an event while it looks.
struct DumpSubscriber {
    evt: EventFd,
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
}

impl MutEventSubscriber for DumpSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        for (i, device) in self.devices.iter().enumerate() {
            let state = device
                .lock()
                .expect("virtio device lock poisoned")
                .describe();
            tracing::warn!("state dump: virtio device {i}: {state}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("virtio event loop: cannot watch the dump eventfd: {e}");
        }
    }
}

/// Holds the event loop between two events: while held, no device
/// processes anything, so its state and guest memory stand still.
pub struct LoopGate {
    evt: EventFd,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    held: bool,
    parked: bool,
}

/// The event loop stays held until this is dropped.
pub struct GateGuard<'a>(&'a LoopGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().held = false;
        self.0.changed.notify_all();
    }
}

impl LoopGate {
    fn new() -> Result<Self, VirtioError> {
        Ok(LoopGate {
            evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().expect("event loop gate poisoned")
    }

    /// Holds the loop once it finishes its current event; `None` if it
    /// did not get there within `timeout` (the hold is then withdrawn).
    pub fn hold(&self, timeout: Duration) -> Option<GateGuard<'_>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        // The loop may still be leaving the previous hold.
        while state.parked || state.held {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .expect("event loop gate poisoned")
                .0;
        }
        state.held = true;
        if self.evt.write(1).is_err() {
            state.held = false;
            return None;
        }
        while !state.parked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.held = false;
                drop(state);
                self.changed.notify_all();
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .expect("event loop gate poisoned")
                .0;
        }
        Some(GateGuard(self))
    }
}

struct GateSubscriber(Arc<LoopGate>);

impl MutEventSubscriber for GateSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.evt.read();
        let mut state = self.0.lock();
        if !state.held {
            return;
        }
        state.parked = true;
        self.0.changed.notify_all();
        while state.held {
            state = self
                .0
                .changed
                .wait(state)
                .expect("event loop gate poisoned");
        }
        state.parked = false;
        self.0.changed.notify_all();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.evt, EventSet::IN)) {
            tracing::error!("virtio event loop: cannot watch the gate eventfd: {e}");
        }
    }
}

struct ExitSubscriber {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("virtio event loop: cannot watch the exit eventfd: {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::hypervisor::{Result as HvResult, Vcpu};

    #[derive(Default)]
    struct FakeVm {
        irqfds: StdMutex<Vec<u32>>,
        ioevents: StdMutex<Vec<(IoEventAddress, u32)>>,
    }

    impl Vm for FakeVm {
        unsafe fn map_memory(&self, _: u32, _: u64, _: u64, _: u64) -> HvResult<()> {
            Ok(())
        }
        fn create_irq_controller(&self) -> HvResult<()> {
            Ok(())
        }
        fn create_vcpu(&self, _: u8) -> HvResult<Box<dyn Vcpu>> {
            unimplemented!("not needed by these tests")
        }
        fn register_irqfd(&self, _: &EventFd, gsi: u32) -> HvResult<()> {
            self.irqfds.lock().unwrap().push(gsi);
            Ok(())
        }
        fn register_ioevent(
            &self,
            _: &EventFd,
            addr: IoEventAddress,
            datamatch: u32,
        ) -> HvResult<()> {
            self.ioevents.lock().unwrap().push((addr, datamatch));
            Ok(())
        }
        fn save_state(&self) -> HvResult<crate::hypervisor::VmState> {
            unimplemented!("not needed by these tests")
        }
        fn restore_state(&self, _: &crate::hypervisor::VmState) -> HvResult<()> {
            unimplemented!("not needed by these tests")
        }
    }

    #[test]
    fn windows_and_cmdline() {
        assert_eq!(window(0).unwrap(), (0xd000_1000, 5));
        assert_eq!(window(2).unwrap(), (0xd000_3000, 7));
        assert_eq!(window(18).unwrap().1, 23);
        assert!(matches!(window(19), Err(VirtioError::InvalidIndex(19))));
        assert!(matches!(
            window(usize::MAX),
            Err(VirtioError::InvalidIndex(_))
        ));
        assert_eq!(
            cmdline_fragment(0xd000_1000, 5),
            "virtio_mmio.device=4K@0xd0001000:5"
        );
    }

    #[test]
    fn attach_wires_irqfd_ioeventfds_and_bus() {
        let vm = FakeVm::default();
        let mut bus = Bus::new();
        let mut devs = VirtioDevices::new(guest_memory());
        let frag = devs.attach(&vm, &mut bus, 1, Rng::new().unwrap()).unwrap();
        assert_eq!(frag, "virtio_mmio.device=4K@0xd0002000:6");
        assert_eq!(*vm.irqfds.lock().unwrap(), vec![6]);
        assert_eq!(
            *vm.ioevents.lock().unwrap(),
            vec![(IoEventAddress::Mmio(0xd000_2050), 0)]
        );
        let mut magic = [0u8; 4];
        assert!(bus.read(0xd000_2000, &mut magic));
        assert_eq!(u32::from_le_bytes(magic), 0x7472_6976);
        // The same window twice is refused by the bus.
        assert!(matches!(
            devs.attach(&vm, &mut bus, 1, Rng::new().unwrap()),
            Err(VirtioError::Bus(_))
        ));
        // The loop starts, can be held and released, and stops promptly.
        let el = devs.spawn(None).unwrap();
        el.dump_trigger().request();
        let gate = el.gate();
        let held = gate.hold(Duration::from_secs(5)).expect("held");
        drop(held);
        assert!(gate.hold(Duration::from_secs(5)).is_some(), "held again");
        el.stop().unwrap();
    }
}
