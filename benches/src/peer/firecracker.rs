//! Firecracker, driven by a config file (`--no-api --config-file`: no API
//! round trips in what is measured), booting the same kernel and initramfs
//! as kiln. Its vsock is hybrid vsock on a unix socket, the same protocol as
//! kiln-vmm's, so the same agent answers both. Its boot-timer device moved
//! (0xC000_0000 since 1.13), so guest userspace start is the agent's
//! console mark, as for QEMU.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    hybrid_ping, hybrid_shutdown, wait_for_pong, BootError, BootSample, ConsoleMark, Peer,
    PeerCmdline, BOOT_TIMEOUT,
};
use crate::child::ChildGuard;

/// A Firecracker configuration.
pub struct Firecracker {
    /// `firecracker` binary.
    pub binary: PathBuf,
    /// Guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Where config files and sockets go.
    pub scratch: PathBuf,
    /// The guest's kernel command line.
    pub cmdline: PeerCmdline,
}

impl Firecracker {
    /// The peer of kiln's `guest` (1 vCPU): the same kernel, initramfs and
    /// memory, its files next to kiln's template directory `template_dir`.
    pub fn for_guest(
        binary: &std::path::Path,
        guest: &crate::vm::GuestArgs,
        template_dir: &std::path::Path,
    ) -> Firecracker {
        Firecracker {
            binary: binary.to_path_buf(),
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            vcpus: 1,
            mem_mib: guest.mem_mib,
            scratch: template_dir.with_file_name("firecracker"),
            cmdline: PeerCmdline::SameAsKiln,
        }
    }

    /// The VM description for run `i`: the console on serial (for the
    /// mark), i8042 reset ends the VM (`reboot=k`), one vsock device.
    pub(super) fn config(&self, uds: &std::path::Path) -> serde_json::Value {
        json!({
            "boot-source": {
                "kernel_image_path": self.kernel,
                "initrd_path": self.initramfs,
                "boot_args": self.cmdline.render("k"),
            },
            "drives": [],
            "machine-config": {
                "vcpu_count": self.vcpus,
                "mem_size_mib": self.mem_mib,
                "smt": false,
            },
            "vsock": { "guest_cid": 3, "uds_path": uds },
        })
    }
}

impl Peer for Firecracker {
    fn name(&self) -> String {
        format!("firecracker{}", self.cmdline.name_suffix())
    }

    fn boot_once(&self, i: usize) -> Result<BootSample, BootError> {
        let what = "firecracker";
        let uds = self.scratch.join(format!("fc-{i}.vsock"));
        let config = self.scratch.join(format!("fc-{i}.json"));
        let _ = std::fs::remove_file(&uds);
        std::fs::write(&config, self.config(&uds).to_string())
            .map_err(|source| BootError::Spawn { what, source })?;
        let start = Instant::now();
        // Seccomp off: a glibc build has no filter of Firecracker's anyway,
        // and kiln's side is measured with its own on.
        let child = Command::new(&self.binary)
            .args(["--no-api", "--no-seccomp", "--level", "Error"])
            .arg("--id")
            .arg(format!("bench-{i}"))
            .arg("--config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BootError::Spawn { what, source })?;
        let mut guard = ChildGuard::new(child);
        let mark = ConsoleMark::watch(what, &mut guard)?;
        wait_for_pong(what, &mut guard, start + BOOT_TIMEOUT, || hybrid_ping(&uds))?;
        let ping = start.elapsed();
        let userspace = mark.since(start)?;
        hybrid_shutdown(&uds);
        let _ = guard.wait_or_kill(Duration::from_secs(30));
        let _ = std::fs::remove_file(&uds);
        let _ = std::fs::remove_file(&config);
        Ok(BootSample {
            userspace,
            ping,
            vmm_setup: None,
        })
    }
}
