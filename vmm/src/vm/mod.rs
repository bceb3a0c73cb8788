//! The handle of a running VM: wait for it, stop it, talk to its guest.

pub mod exit;
pub mod hybrid_vsock;
pub mod timings;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::devices::virtio::{DumpTrigger, EventLoop};
use crate::hypervisor;
use crate::memory::GuestMemoryMmap;
use crate::snapshot::{SnapshotError, SnapshotReport, Snapshotter};
use crate::vcpu::threads::VcpuThreads;
use exit::{ExitReason, ExitState};
use hybrid_vsock::VsockConnectError;
use timings::{BootClock, Timings};

/// How long [`MicroVm::vsock_connect`] waits for the guest to accept.
pub const VSOCK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running microVM. Dropping it stops the VM.
///
/// All methods take `&self`: one thread may block in [`MicroVm::wait`] while
/// another calls [`MicroVm::shutdown`].
pub struct MicroVm {
    pub(crate) exit: Arc<ExitState>,
    pub(crate) clock: Arc<BootClock>,
    pub(crate) vcpus: Arc<VcpuThreads>,
    pub(crate) event_loop: Mutex<Option<EventLoop>>,
    pub(crate) dump: DumpTrigger,
    pub(crate) serial_log: Option<PathBuf>,
    pub(crate) vsock_uds: Option<PathBuf>,
    pub(crate) control_socket: Option<PathBuf>,
    /// The control thread's listening socket, shut down to end that thread.
    pub(crate) control_listener: Option<OwnedFd>,
    pub(crate) snapshotter: Arc<Snapshotter>,
    pub(crate) cmdline: String,
    /// Held while stopping, so every caller of wait/shutdown returns only
    /// after the threads are gone.
    pub(crate) finishing: Mutex<()>,
    // Dropped last, after the vCPU threads and devices that use them.
    pub(crate) _vm: Arc<dyn hypervisor::Vm>,
    pub(crate) _mem: GuestMemoryMmap,
}

/// Asks a VM to stop from anywhere (a signal thread, a timeout), without
/// holding the [`MicroVm`].
#[derive(Clone)]
pub struct StopHandle(Arc<ExitState>);

impl StopHandle {
    /// Requests [`ExitReason::Stopped`]; the thread in [`MicroVm::wait`] then
    /// stops the vCPUs and returns.
    pub fn stop(&self) {
        self.0.request(ExitReason::Stopped);
    }
}

impl MicroVm {
    /// Blocks until the VM exits, stops every vCPU and device thread, and
    /// returns why it exited.
    pub fn wait(&self) -> ExitReason {
        let reason = self
            .exit
            .wait(None)
            .expect("wait without timeout returns a reason");
        self.finish();
        reason
    }

    /// Like [`MicroVm::wait`], but returns `None` if the VM is still running
    /// after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.exit.wait(Some(timeout))?;
        self.finish();
        Some(reason)
    }

    /// Stops the VM (if it has not exited already) and returns the exit
    /// reason: [`ExitReason::Stopped`] unless the guest exited first.
    pub fn shutdown(&self) -> ExitReason {
        self.exit.request(ExitReason::Stopped);
        self.finish();
        self.exit.reason().unwrap_or(ExitReason::Stopped)
    }

    /// A handle that can stop this VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.exit))
    }

    /// A handle that makes the device event loop log every virtio device's
    /// state (queues, interrupts, vsock connections), for diagnosing a
    /// guest that stopped moving data. `kiln-vmm` calls it on SIGUSR1.
    pub fn dump_trigger(&self) -> DumpTrigger {
        self.dump.clone()
    }

    /// The registers of the vCPU that stopped the VM, when the guest crashed
    /// (a triple fault leaves nothing in the guest's own log).
    pub fn crash_state(&self) -> Option<String> {
        self.exit.crash_state()
    }

    /// The exit reason, if the VM has exited or is stopping.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.reason()
    }

    /// Connects to guest vsock `port` through the hybrid-vsock socket.
    pub fn vsock_connect(&self, port: u32) -> Result<UnixStream, VsockConnectError> {
        let uds = self
            .vsock_uds
            .as_deref()
            .ok_or(VsockConnectError::NoVsock)?;
        hybrid_vsock::connect(uds, port, VSOCK_CONNECT_TIMEOUT)
    }

    /// Snapshots the VM into its snapshot directory (`config.control`),
    /// then resumes it or, with `resume` false, stops it.
    pub fn snapshot(&self, resume: bool) -> Result<SnapshotReport, SnapshotError> {
        let report = self.snapshotter.take(resume)?;
        if !resume {
            self.snapshotter.stop();
        }
        Ok(report)
    }

    /// The control socket, when configured.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// Boot milestones so far.
    pub fn timings(&self) -> Timings {
        self.clock.timings()
    }

    /// The serial log file, when the serial port is on.
    pub fn serial_log(&self) -> Option<&Path> {
        self.serial_log.as_deref()
    }

    /// The hybrid-vsock unix socket, when the VM has a vsock device.
    pub fn vsock_uds(&self) -> Option<&Path> {
        self.vsock_uds.as_deref()
    }

    /// The kernel command line the guest booted with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Stops vCPU threads, then the device event loop, and removes the vsock
    /// socket file. Idempotent.
    fn finish(&self) {
        let _finishing = self.finishing.lock().expect("finish lock poisoned");
        let stuck = self.vcpus.stop();
        if !stuck.is_empty() {
            tracing::error!("vcpus {stuck:?} are still running");
        }
        let event_loop = self
            .event_loop
            .lock()
            .expect("event loop lock poisoned")
            .take();
        if let Some(event_loop) = event_loop {
            if let Err(e) = event_loop.stop() {
                tracing::warn!("virtio event loop: {e}");
            }
        }
        if let Some(uds) = &self.vsock_uds {
            let _ = std::fs::remove_file(uds);
        }
        if let Some(listener) = &self.control_listener {
            // SAFETY: shutdown(2) on a descriptor this handle owns; it wakes
            // the control thread's accept, which then sees the VM stopping.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(socket) = &self.control_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handle_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::MicroVm>();
        assert_send_sync::<super::StopHandle>();
    }
}
