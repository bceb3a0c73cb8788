//! A tiny timed guest that tells hardware-speed KVM from an emulating one.
//!
//! Some hosts expose a `/dev/kvm` that runs guest user mode natively but
//! emulates guest kernel mode instruction by instruction (for example a
//! software "PVM" backend). Names and capabilities look the same; only timing
//! tells them apart. The probe runs a `dec ecx; jnz` loop at CPL0 in a
//! 32-bit flat guest and the same loop on the host, and compares the two.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::hypervisor::{EntryMode, EntryState, Hypervisor, HypervisorError, VcpuExit};
use crate::vcpu::kick;

/// Loop iterations per measurement.
const ITERATIONS: u32 = 1 << 20;
/// Measurement rounds; the fastest counts.
const ROUNDS: usize = 3;
/// Guest RAM of the probe VM.
const MEM_SIZE: usize = 0x10000;
/// Where the probe code is loaded and entered.
const CODE_ADDR: u64 = 0x1000;
/// Guest slowdown (guest time / host time for the same loop) above which
/// guest kernel mode is considered emulated rather than hardware-executed.
pub const EMULATED_SLOWDOWN: f64 = 50.0;

const PORT_ROUND_START: u16 = 0x10;
const PORT_LOOP_DONE: u16 = 0x11;
const PORT_ROUND_TRIP: u16 = 0x12;

/// Errors from the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The hypervisor refused a step.
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] HypervisorError),
    /// Guest memory could not be set up.
    #[error("probe guest memory: {0}")]
    Memory(String),
    /// The guest stopped somewhere other than the expected port writes.
    #[error("probe guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
    /// The guest did not finish within the time limit.
    #[error("probe guest did not finish {ROUNDS} rounds of a {ITERATIONS}-iteration loop within {0:?}: guest kernel mode is far slower than hardware")]
    TimedOut(Duration),
    /// The vCPU thread could not be started or signalled.
    #[error("probe thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct ProbeReport {
    /// Nanoseconds per loop iteration in the guest at CPL0.
    pub guest_ns_per_iter: f64,
    /// Nanoseconds per loop iteration on the host, in this process.
    pub host_ns_per_iter: f64,
    /// One guest exit-and-resume round trip, in microseconds.
    pub round_trip_us: f64,
}

impl ProbeReport {
    /// How many times slower the guest ran the loop than the host.
    pub fn slowdown(&self) -> f64 {
        self.guest_ns_per_iter / self.host_ns_per_iter.max(f64::MIN_POSITIVE)
    }

    /// Whether guest kernel mode runs at hardware speed.
    pub fn hardware_speed(&self) -> bool {
        self.slowdown() < EMULATED_SLOWDOWN
    }
}

/// 32-bit code: signal round start, measure a bare exit round trip, run the
/// loop, signal its end, repeat.
fn probe_code() -> Vec<u8> {
    let mut code = vec![
        0xe6,
        PORT_ROUND_START as u8,
        0xe6,
        PORT_ROUND_TRIP as u8,
        0xb9,
    ];
    code.extend_from_slice(&ITERATIONS.to_le_bytes()); // mov ecx, ITERATIONS
    code.extend_from_slice(&[
        0x49, // dec ecx
        0x75,
        0xfd, // jnz -3
        0xe6,
        PORT_LOOP_DONE as u8, // out PORT_LOOP_DONE, al
        0xeb,
        0xf0, // jmp start
    ]);
    code
}

/// Runs the same loop on the host and returns nanoseconds per iteration.
fn host_loop_ns() -> f64 {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = ITERATIONS;
        // SAFETY: a register-only countdown loop; touches no memory or stack.
        unsafe {
            std::arch::asm!("2:", "dec {0:e}", "jnz 2b", inout(reg) n, options(nomem, nostack));
        }
        std::hint::black_box(n);
        best = best.min(start.elapsed().as_nanos() as f64);
    }
    best / f64::from(ITERATIONS)
}

struct GuestTimes {
    loop_ns: f64,
    round_trip_ns: f64,
}

/// Runs the probe guest on the current thread, sending the result to `tx`.
///
/// Stops after the first round when that round alone shows an emulated CPU
/// (`slow_loop_ns`), since more rounds of an emulated loop only cost time.
fn run_guest(
    hv: &dyn Hypervisor,
    tx: &mpsc::Sender<libc::pthread_t>,
    slow_loop_ns: f64,
) -> Result<GuestTimes, ProbeError> {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    mem.write_slice(&probe_code(), GuestAddress(CODE_ADDR))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| ProbeError::Memory(e.to_string()))?;
    let vm = hv.create_vm()?;
    // SAFETY: `mem` owns the mapping and is declared before `vm`, so it is
    // dropped after the VM (and its vCPU) that can access it.
    unsafe { vm.map_memory(0, 0, MEM_SIZE as u64, host as u64)? };
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_entry_state(&EntryState {
        mode: EntryMode::Protected32,
        rip: CODE_ADDR,
        rsp: 0,
        rbx: 0,
        rsi: 0,
    })?;
    let _ = tx.send(kick::current_thread());

    let mut best = GuestTimes {
        loop_ns: f64::MAX,
        round_trip_ns: f64::MAX,
    };
    let mut marks = [Instant::now(); 3];
    let mut round = 0;
    while round < ROUNDS {
        let exit = vcpu.run()?;
        let now = Instant::now();
        match exit {
            VcpuExit::IoOut(PORT_ROUND_START, _) => marks[0] = now,
            VcpuExit::IoOut(PORT_ROUND_TRIP, _) => marks[1] = now,
            VcpuExit::IoOut(PORT_LOOP_DONE, _) => {
                marks[2] = now;
                let rt = marks[1].duration_since(marks[0]).as_nanos() as f64;
                let total = marks[2].duration_since(marks[1]).as_nanos() as f64;
                best.round_trip_ns = best.round_trip_ns.min(rt);
                best.loop_ns = best.loop_ns.min((total - rt).max(1.0));
                round += 1;
                if best.loop_ns > slow_loop_ns {
                    break;
                }
            }
            VcpuExit::Interrupted => return Err(ProbeError::UnexpectedExit("interrupted".into())),
            other => return Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
        }
    }
    Ok(best)
}

/// Runs the probe with a time limit and reports guest vs host loop speed.
pub fn run(hv: &'static dyn Hypervisor, timeout: Duration) -> Result<ProbeReport, ProbeError> {
    kick::install_handler()?;
    let host_ns_per_iter = host_loop_ns();
    let slow_loop_ns = host_ns_per_iter * f64::from(ITERATIONS) * EMULATED_SLOWDOWN * 4.0;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("probe-vcpu".into())
        .spawn(move || {
            let _ = done_tx.send(run_guest(hv, &tid_tx, slow_loop_ns));
        })?;
    let deadline = Instant::now() + timeout;
    let tid = tid_rx.recv_timeout(timeout).ok();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(result) => {
                let times = result?;
                return Ok(ProbeReport {
                    guest_ns_per_iter: times.loop_ns / f64::from(ITERATIONS),
                    host_ns_per_iter,
                    round_trip_us: times.round_trip_ns / 1000.0,
                });
            }
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
    // Timed out: kick the vCPU until its thread gives up, then report.
    if let Some(tid) = tid {
        for _ in 0..50 {
            let _ = kick::kick(tid);
            if done_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
        }
    }
    Err(ProbeError::TimedOut(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_code_jumps_land_on_instruction_boundaries() {
        let code = probe_code();
        // jnz at offset 10 targets offset 9 (dec ecx).
        assert_eq!(code[9], 0x49);
        assert_eq!(code[10], 0x75);
        assert_eq!((12i32 + i32::from(code[11] as i8)), 9);
        // jmp at offset 14 targets offset 0 (start of round).
        assert_eq!(code[14], 0xeb);
        assert_eq!(16i32 + i32::from(code[15] as i8), 0);
        assert_eq!(code.len(), 16);
    }

    #[test]
    fn host_loop_takes_measurable_time() {
        let ns = host_loop_ns();
        assert!(
            ns > 0.0 && ns < 1000.0,
            "implausible host loop speed {ns} ns/iter"
        );
    }

    #[test]
    fn slowdown_threshold_classifies() {
        let fast = ProbeReport {
            guest_ns_per_iter: 0.4,
            host_ns_per_iter: 0.3,
            round_trip_us: 1.0,
        };
        assert!(fast.hardware_speed());
        let slow = ProbeReport {
            guest_ns_per_iter: 700.0,
            host_ns_per_iter: 0.3,
            round_trip_us: 1.0,
        };
        assert!(!slow.hardware_speed());
    }
}
