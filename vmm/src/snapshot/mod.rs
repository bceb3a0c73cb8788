//! Snapshots of a running VM, and what a restore reads back.
//!
//! A snapshot is a directory with two files: [`STATE_FILE`] (checked JSON,
//! [`format`]: vCPUs, interrupt controllers and clocks, every virtio
//! transport with its queues, the memory layout) and [`MEMORY_FILE`] (raw
//! guest RAM, [`memory_file`], mapped copy-on-write by a restore).
//!
//! Taking one ([`Snapshotter::take`]): park every vCPU (each saves its own
//! state), hold the device event loop, let devices drop what cannot be
//! saved (vsock's host connections), save the devices and the VM, write
//! memory then state, then resume (vsock tells the guest its connections
//! are gone) or stop. [`control`] serves requests on a unix socket.

pub mod control;
pub mod format;
pub mod memory_file;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::devices::legacy::{Serial, SerialSnapshot};
use crate::devices::virtio::transport::mmio::{MmioTransport, TransportState};
use crate::devices::virtio::LoopGate;
use crate::hypervisor::{HypervisorError, VcpuState, Vm, VmState};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::pause::{PauseCtl, PauseError};
use crate::vcpu::threads::VcpuThreads;
use crate::vm::exit::{ExitReason, ExitState};
pub use memory_file::MemoryRegion;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "vm.state";
/// The guest memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "vm.mem";
/// How long the vCPUs and the event loop get to pause.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from taking, reading or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The state file does not start with the snapshot magic.
    #[error("not a kiln snapshot state file")]
    NotASnapshot,
    /// The state file has another format version.
    #[error(
        "snapshot format version {found}, this kiln-vmm reads version {expected}: take the snapshot again"
    )]
    FormatVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The snapshot was taken by another kiln-vmm version.
    #[error("snapshot taken by kiln-vmm {found}, this is kiln-vmm {expected}")]
    VmmVersion {
        /// Version in the file.
        found: String,
        /// This build's version.
        expected: &'static str,
    },
    /// The state file is shorter than its header says.
    #[error("snapshot state file is truncated: {found} of {expected} body bytes")]
    Truncated {
        /// Bytes present.
        found: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The state file is damaged.
    #[error("snapshot state file is corrupt: {0}")]
    Corrupt(&'static str),
    /// The state could not be encoded.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(#[source] serde_json::Error),
    /// The body passed its checksum but does not describe a snapshot.
    #[error("cannot decode the snapshot state: {0}")]
    Decode(#[source] serde_json::Error),
    /// The memory file's size does not match the state's memory layout.
    #[error("snapshot memory file is {found} bytes, the snapshot needs {expected}")]
    MemorySize {
        /// Size on disk.
        found: u64,
        /// Size the layout needs.
        expected: u64,
    },
    /// The memory file could not be mapped.
    #[error("cannot map the snapshot memory file: {0}")]
    Map(String),
    /// The VM config does not fit the snapshot.
    #[error("the vm config does not match the snapshot: {0}")]
    Mismatch(String),
    /// The VM has no snapshot directory (no control config).
    #[error("this vm has no snapshot directory")]
    NoSnapshotDir,
    /// The vCPUs could not be paused or saved.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The device event loop could not be held.
    #[error("the device event loop did not pause within {PAUSE_TIMEOUT:?}")]
    EventLoop,
    /// The hypervisor refused to save or restore the VM state.
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] HypervisorError),
    /// A device's saved state does not fit the device.
    #[error("virtio device {index}: {source}")]
    Device {
        /// Window index.
        index: usize,
        /// Underlying error.
        #[source]
        source: crate::devices::virtio::transport::mmio::RestoreError,
    },
}

/// Everything a restore needs besides guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    /// Guest RAM in bytes (as configured).
    pub mem_bytes: u64,
    /// Where each RAM region lives in the memory file.
    pub memory: Vec<MemoryRegion>,
    /// The command line the guest booted with.
    pub cmdline: String,
    /// Each vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers and clocks.
    pub vm: VmState,
    /// Each virtio device, in window order (vsock, rng, drives).
    pub devices: Vec<TransportState>,
    /// COM1, when the VM had one (a `serial_log`).
    pub serial: Option<SerialSnapshot>,
}

impl VmSnapshot {
    /// Checks the snapshot fits a VM of `vcpus` vCPUs and `mem_bytes` of RAM.
    pub fn check_fits(&self, vcpus: u8, mem_bytes: u64) -> Result<(), SnapshotError> {
        if self.vcpus.len() != usize::from(vcpus) {
            return Err(SnapshotError::Mismatch(format!(
                "the snapshot has {} vcpus, the config {vcpus}",
                self.vcpus.len()
            )));
        }
        if self.mem_bytes != mem_bytes {
            return Err(SnapshotError::Mismatch(format!(
                "the snapshot has {} MiB of memory, the config {}",
                self.mem_bytes >> 20,
                mem_bytes >> 20
            )));
        }
        Ok(())
    }
}

/// Reads and checks the snapshot in `dir` and maps its memory: nothing
/// of it runs yet.
pub fn load(dir: &Path) -> Result<(VmSnapshot, GuestMemoryMmap), SnapshotError> {
    let snapshot = format::read(&dir.join(STATE_FILE))?;
    tracing::debug!("step: snapshot state read and checked");
    let mem = memory_file::map(&dir.join(MEMORY_FILE), &snapshot.memory)?;
    Ok((snapshot, mem))
}

/// What a snapshot cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// Bytes of guest memory written (non-zero pages).
    pub memory_bytes_written: u64,
    /// Microseconds until every vCPU was parked.
    pub pause_us: u64,
    /// Microseconds the guest stood still.
    pub total_us: u64,
    /// Whether the VM runs on (else it stops).
    pub resumed: bool,
}

/// The snapshot directory and its two files, opened when the VM is built:
/// no VMM thread opens files once it runs (seccomp), so snapshots replace
/// the contents of these. Clones map the memory file, so a directory must
/// not be snapshotted into again while clones of it run.
pub struct SnapshotFiles {
    dir: PathBuf,
    state: File,
    memory: File,
}

impl SnapshotFiles {
    /// Opens (creating) the state and memory files in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let open = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| SnapshotError::Io { path, source })
        };
        Ok(SnapshotFiles {
            dir: dir.to_owned(),
            state: open(STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a running VM shares with whoever snapshots it.
pub struct Snapshotter {
    pub(crate) vm: Arc<dyn Vm>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) mem_bytes: u64,
    pub(crate) cmdline: String,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) serial: Option<Arc<Mutex<Serial>>>,
    pub(crate) pause: Arc<PauseCtl>,
    pub(crate) vcpus: Arc<VcpuThreads>,
    pub(crate) gate: Arc<LoopGate>,
    pub(crate) exit: Arc<ExitState>,
    /// Where snapshots go; one snapshot at a time.
    pub(crate) files: Mutex<Option<SnapshotFiles>>,
}

impl Snapshotter {
    /// Snapshots the VM into its snapshot directory, then resumes it or,
    /// with `resume` false, leaves it paused for [`Snapshotter::stop`] (so
    /// the caller can answer before the process goes away).
    pub fn take(&self, resume: bool) -> Result<SnapshotReport, SnapshotError> {
        let files = self.files.lock().expect("snapshot lock poisoned");
        let files = files.as_ref().ok_or(SnapshotError::NoSnapshotDir)?;
        let start = Instant::now();
        let vcpus = self
            .pause
            .pause(&self.exit, PAUSE_TIMEOUT, |id| self.vcpus.kick(id))?;
        let pause_us = start.elapsed().as_micros() as u64;
        let result = self.save_paused(files, vcpus, resume);
        if resume || result.is_err() {
            self.pause.resume();
        }
        let (state_bytes, memory_bytes_written) = result?;
        Ok(SnapshotReport {
            dir: files.dir.clone(),
            state_bytes,
            memory_bytes_written,
            pause_us,
            total_us: start.elapsed().as_micros() as u64,
            resumed: resume,
        })
    }

    /// With the vCPUs parked: hold the device loop, save, write.
    fn save_paused(
        &self,
        files: &SnapshotFiles,
        vcpus: Vec<VcpuState>,
        resume: bool,
    ) -> Result<(u64, u64), SnapshotError> {
        let _held = self
            .gate
            .hold(PAUSE_TIMEOUT)
            .ok_or(SnapshotError::EventLoop)?;
        let lock = |t: &Arc<Mutex<MmioTransport>>| {
            let guard = t.lock().expect("virtio transport lock poisoned");
            guard
                .device()
                .lock()
                .expect("virtio device lock poisoned")
                .prepare_snapshot();
            guard.save()
        };
        let devices: Vec<TransportState> = self.transports.iter().map(lock).collect();
        let result = self
            .vm
            .save_state()
            .map_err(SnapshotError::from)
            .and_then(|vm| self.write_files(files, vcpus, vm, devices));
        if resume {
            // Host connections were dropped above, taken or not.
            self.after_snapshot();
        }
        result
    }

    /// Writes guest memory, then the state that describes it.
    fn write_files(
        &self,
        files: &SnapshotFiles,
        vcpus: Vec<VcpuState>,
        vm: VmState,
        devices: Vec<TransportState>,
    ) -> Result<(u64, u64), SnapshotError> {
        let mem_path = files.dir.join(MEMORY_FILE);
        let (memory, written) = memory_file::write(&self.mem, &files.memory, &mem_path)?;
        let serial = self
            .serial
            .as_ref()
            .map(|s| s.lock().expect("serial lock poisoned").save());
        let snapshot = VmSnapshot {
            mem_bytes: self.mem_bytes,
            memory,
            cmdline: self.cmdline.clone(),
            vcpus,
            vm,
            devices,
            serial,
        };
        let state_path = files.dir.join(STATE_FILE);
        let state_bytes = format::write(&files.state, &state_path, &snapshot)?;
        Ok((state_bytes, written))
    }

    /// Stops a VM left paused by a snapshot without `resume`.
    pub fn stop(&self) {
        self.exit.request(ExitReason::Stopped);
        self.pause.resume();
    }

    /// Tells every device the snapshot is over.
    pub(crate) fn after_snapshot(&self) {
        for t in &self.transports {
            let guard = t.lock().expect("virtio transport lock poisoned");
            guard
                .device()
                .lock()
                .expect("virtio device lock poisoned")
                .after_snapshot();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;

    /// A snapshot with plausible contents, for format tests.
    pub(crate) fn sample() -> VmSnapshot {
        let vcpu: VcpuState = serde_json::from_value(serde_json::json!({
            "regs": serde_json::to_value(kvm_bindings::kvm_regs { rip: 0x1000, ..Default::default() }).unwrap(),
            "sregs": serde_json::to_value(kvm_bindings::kvm_sregs::default()).unwrap(),
            "xsave": serde_json::to_value(kvm_bindings::kvm_xsave::default()).unwrap(),
            "xsave_extra": [],
            "tsc_khz": 2_000_000,
            "xcrs": serde_json::to_value(kvm_bindings::kvm_xcrs::default()).unwrap(),
            "debug_regs": serde_json::to_value(kvm_bindings::kvm_debugregs::default()).unwrap(),
            "lapic": serde_json::to_value(kvm_bindings::kvm_lapic_state::default()).unwrap(),
            "mp_state": serde_json::to_value(kvm_bindings::kvm_mp_state::default()).unwrap(),
            "events": serde_json::to_value(kvm_bindings::kvm_vcpu_events::default()).unwrap(),
            "msrs": [serde_json::to_value(kvm_bindings::kvm_msr_entry { index: 0x10, data: 77, ..Default::default() }).unwrap()],
        }))
        .unwrap();
        VmSnapshot {
            mem_bytes: 64 << 20,
            memory: vec![MemoryRegion {
                guest_addr: 0,
                len: 64 << 20,
                file_offset: 0,
            }],
            cmdline: "console=none".into(),
            vcpus: vec![vcpu],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            devices: Vec::new(),
            serial: None,
        }
    }

    #[test]
    fn vcpu_state_survives_the_round_trip() {
        let snap = sample();
        let back: VmSnapshot = serde_json::from_slice(&serde_json::to_vec(&snap).unwrap()).unwrap();
        assert_eq!(back.vcpus[0].regs.rip, 0x1000);
        assert_eq!(back.vcpus[0].msrs[0].data, 77);
    }

    #[test]
    fn config_must_fit() {
        let snap = sample();
        snap.check_fits(1, 64 << 20).unwrap();
        assert!(matches!(
            snap.check_fits(2, 64 << 20),
            Err(SnapshotError::Mismatch(_))
        ));
        assert!(matches!(
            snap.check_fits(1, 128 << 20),
            Err(SnapshotError::Mismatch(_))
        ));
    }
}
