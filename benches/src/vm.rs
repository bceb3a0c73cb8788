//! A kiln VM for the synchronous benchmarks: the async `VmProcess` on a
//! runtime of its own, plus raw agent connections (the benchmarks measure
//! the agent path itself, so they drive `kiln_agent::client` directly).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln::vm_process::{AgentAddr, SpawnOptions, VmProcess, VmSpec, VmmExit};
use kiln_agent::protocol::AGENT_VSOCK_PORT;
use kiln_vmm::config::{DriveConfig, VmConfig};
use kiln_vmm::vm::hybrid_vsock;

/// The benchmark guest and the kiln-vmm that runs it (flattened into the
/// scenarios' arguments).
#[derive(clap::Args, Clone)]
pub struct GuestArgs {
    /// Guest kernel (vmlinux).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    pub initramfs: PathBuf,
    /// kiln-vmm binary.
    #[arg(long)]
    pub kiln_vmm: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 256)]
    pub mem_mib: u32,
}

impl GuestArgs {
    /// The VM spec: 1 vCPU, no disks.
    pub fn spec(&self) -> VmSpec {
        spec(
            &self.kiln_vmm,
            &self.kernel,
            &self.initramfs,
            self.mem_mib,
            &[],
        )
    }

    /// Guest memory, KiB (the size of the guest RAM mapping).
    pub fn guest_kib(&self) -> u64 {
        u64::from(self.mem_mib) * 1024
    }
}

/// A runtime with two workers, for scenarios that run VMs concurrently.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// The spec of a benchmark VM: 1 vCPU, `mem_mib`, the given disks read-only.
pub fn spec(
    vmm: &Path,
    kernel: &Path,
    initramfs: &Path,
    mem_mib: u32,
    drives: &[PathBuf],
) -> VmSpec {
    let mut config = VmConfig::new(kernel);
    config.initramfs = Some(initramfs.to_path_buf());
    config.mem_mib = u64::from(mem_mib);
    config.drives = drives
        .iter()
        .map(|path| DriveConfig {
            path: path.clone(),
            read_only: true,
        })
        .collect();
    VmSpec {
        vmm: vmm.to_path_buf(),
        config,
    }
}

/// A booted kiln VM.
pub struct BenchVm {
    rt: tokio::runtime::Runtime,
    vm: Option<VmProcess>,
}

impl BenchVm {
    /// Spawns a VM and waits up to `timeout` for its agent.
    pub fn boot(spec: &VmSpec, timeout: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let vm = rt.block_on(async { VmProcess::spawn(spec, &SpawnOptions::default()) })?;
        let this = BenchVm { rt, vm: Some(vm) };
        this.rt
            .block_on(this.vm().wait_ready(timeout))
            .with_context(|| format!("booting kiln ({})", this.vm().vmm_report()))?;
        Ok(this)
    }

    fn vm(&self) -> &VmProcess {
        self.vm.as_ref().expect("the VM is there until drop")
    }

    /// A fresh connection to the agent.
    pub fn connect(&self) -> Result<UnixStream> {
        let AgentAddr::HybridVsock(uds) = self.vm().agent() else {
            anyhow::bail!("not a kiln-vmm VM");
        };
        Ok(hybrid_vsock::connect(
            uds,
            AGENT_VSOCK_PORT,
            Duration::from_secs(30),
        )?)
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.vm().pid()
    }

    /// When the VMM was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.vm().spawned_at()
    }

    /// The VMM's log.
    pub fn log_path(&self) -> &Path {
        self.vm().log_path()
    }

    /// What the VMM last said and whether it runs.
    pub fn vmm_report(&self) -> String {
        self.vm().vmm_report()
    }

    /// Asks the guest to power off; kills the VMM after `timeout`.
    pub fn shutdown(mut self, timeout: Duration) -> Result<VmmExit> {
        let vm = self.vm.take().expect("the VM is there until drop");
        let exit = self.rt.block_on(vm.shutdown(timeout))?;
        Ok(exit)
    }
}

impl Drop for BenchVm {
    fn drop(&mut self) {
        // Kill and reap while the runtime that reaps it still runs.
        if let Some(vm) = self.vm.take() {
            let _ = vm.kill();
            // The timer is made inside the runtime (it needs its clock).
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), vm.wait()).await });
        }
    }
}
