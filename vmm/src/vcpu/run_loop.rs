//! The per-vCPU run loop.

use std::sync::Arc;

use super::pause::PauseCtl;
use crate::devices::bus::Bus;
use crate::hypervisor::{Vcpu, VcpuExit};
use crate::vm::exit::{ExitReason, ExitState};
use crate::vm::timings::BootClock;

/// KVM system event types (`KVM_SYSTEM_EVENT_*`).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Everything one vCPU thread needs.
pub struct VcpuContext {
    /// vCPU index (0 is the boot CPU).
    pub id: u8,
    /// The configured vCPU.
    pub vcpu: Box<dyn Vcpu>,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Shared stop flag and exit reason.
    pub exit: Arc<ExitState>,
    /// Boot milestones (vCPU 0 marks kernel entry).
    pub clock: Arc<BootClock>,
    /// Snapshot pauses.
    pub pause: Arc<PauseCtl>,
    /// Jail self-test (`JailConfig::test_seccomp_violation`): make a
    /// forbidden syscall once the guest's userspace has started.
    pub test_seccomp_violation: bool,
}

/// Maps a guest-visible exit to what the loop does with it: `None` to keep
/// running, `Some(reason)` to stop the VM.
fn handle_exit(id: u8, exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                tracing::trace!("vcpu {id}: read of unclaimed port {port:#x}");
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                tracing::trace!("vcpu {id}: write to unclaimed port {port:#x}");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::trace!("vcpu {id}: read of unclaimed mmio {addr:#x}");
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::trace!("vcpu {id}: write to unclaimed mmio {addr:#x}");
            }
            None
        }
        VcpuExit::Interrupted => None,
        VcpuExit::Hlt => Some(ExitReason::Halted { vcpu: id }),
        VcpuExit::Shutdown => Some(ExitReason::TripleFault { vcpu: id }),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN) => Some(ExitReason::PowerOff),
        VcpuExit::SystemEvent(SYSTEM_EVENT_RESET) => Some(ExitReason::Reset),
        VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH) => Some(ExitReason::Crashed { vcpu: id }),
        VcpuExit::SystemEvent(kind) => Some(ExitReason::UnhandledExit {
            vcpu: id,
            exit: format!("system event {kind}"),
        }),
        VcpuExit::InternalError(suberror) => Some(ExitReason::InternalError { vcpu: id, suberror }),
        VcpuExit::FailEntry(reason) => Some(ExitReason::FailEntry { vcpu: id, reason }),
        VcpuExit::Other(exit) => Some(ExitReason::UnhandledExit { vcpu: id, exit }),
    }
}

/// Runs the vCPU until the VM stops. Records the reason when this vCPU is
/// the one that ends the VM.
pub fn run(mut ctx: VcpuContext) {
    let id = ctx.id;
    if id == 0 {
        ctx.clock.mark_kernel_entry();
    }
    while !ctx.exit.stopping() {
        let mut interrupted = false;
        let reason = match ctx.vcpu.run() {
            Ok(VcpuExit::Interrupted) => {
                interrupted = true;
                None
            }
            Ok(exit) => handle_exit(id, exit, &ctx.pio, &ctx.mmio),
            Err(e) => Some(ExitReason::VcpuError {
                vcpu: id,
                message: e.to_string(),
            }),
        };
        if let Some(reason) = reason {
            if !reason.is_clean() {
                // The guest cannot log a triple fault; its last state can.
                ctx.exit.record_crash_state(ctx.vcpu.describe_state());
            }
            tracing::debug!("vcpu {id} stops the vm: {reason}");
            ctx.exit.request(reason);
        }
        // A kick may have set immediate exit on the way out; clear it so a
        // later run (if the VM is not stopping) enters the guest.
        ctx.vcpu.set_immediate_exit(false);
        if ctx.pause.requested() {
            if interrupted {
                ctx.pause.park(id, ctx.vcpu.as_ref(), &ctx.exit);
            } else {
                // The next run completes the access just handled (KVM does
                // that before it looks at immediate exit) and returns at once.
                ctx.vcpu.set_immediate_exit(true);
            }
        }
        if ctx.test_seccomp_violation && ctx.clock.timings().userspace_start.is_some() {
            seccomp_self_test();
        }
    }
}

/// Opens a network socket, which no vCPU filter allows: under the jail the
/// VMM dies here with a seccomp report. Without seccomp the socket is
/// closed again and the self-test is logged as failed.
#[cold]
fn seccomp_self_test() {
    tracing::warn!("jail self-test: a vcpu thread opens a network socket");
    // SAFETY: socket(2) takes no pointers; a returned descriptor is closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us and nothing else owns it.
        unsafe { libc::close(fd) };
        tracing::error!("jail self-test: the vcpu thread was allowed a network socket");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_reasons() {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let mut buf = [0u8; 4];
        assert_eq!(
            handle_exit(1, VcpuExit::MmioRead(0x1000, &mut buf), &pio, &mmio),
            None
        );
        assert_eq!(buf, [0xff; 4], "unbacked mmio reads as all ones");
        assert_eq!(
            handle_exit(1, VcpuExit::IoOut(0x80, &[1]), &pio, &mmio),
            None
        );
        assert_eq!(
            handle_exit(1, VcpuExit::Shutdown, &pio, &mmio),
            Some(ExitReason::TripleFault { vcpu: 1 })
        );
        assert_eq!(
            handle_exit(0, VcpuExit::SystemEvent(1), &pio, &mmio),
            Some(ExitReason::PowerOff)
        );
        assert_eq!(
            handle_exit(0, VcpuExit::SystemEvent(2), &pio, &mmio),
            Some(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(2, VcpuExit::SystemEvent(3), &pio, &mmio),
            Some(ExitReason::Crashed { vcpu: 2 })
        );
        assert_eq!(
            handle_exit(0, VcpuExit::InternalError(1), &pio, &mmio),
            Some(ExitReason::InternalError {
                vcpu: 0,
                suberror: 1
            })
        );
        assert_eq!(handle_exit(0, VcpuExit::Interrupted, &pio, &mmio), None);
        assert_eq!(
            handle_exit(3, VcpuExit::Hlt, &pio, &mmio),
            Some(ExitReason::Halted { vcpu: 3 })
        );
    }
}
