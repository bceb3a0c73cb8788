//! QEMU's `microvm` machine with in-kernel vhost-vsock, booting the same
//! kernel and initramfs as kiln.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_agent::client;
use kiln_agent::protocol::AGENT_VSOCK_PORT;

use super::{wait_for_pong, BootError, BootSample, ConsoleMark, Peer, PeerCmdline, BOOT_TIMEOUT};
use crate::child::ChildGuard;
use crate::vsock;

/// First guest CID handed to QEMU runs; run `i` uses `CID_BASE + i`.
const CID_BASE: u32 = 1000;

/// A QEMU microvm configuration.
pub struct QemuMicrovm {
    /// `qemu-system-x86_64` binary.
    pub qemu: PathBuf,
    /// Firmware directory (`-L`), holding qboot.
    pub data_dir: Option<PathBuf>,
    /// Guest kernel (vmlinux, PVH entry).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// A read-only disk image (the runtime image), the guest's /dev/vda as
    /// under kiln.
    pub image: Option<PathBuf>,
    /// The guest's kernel command line.
    pub cmdline: PeerCmdline,
}

impl QemuMicrovm {
    fn command(&self, cid: u32) -> Command {
        let mut cmd = Command::new(&self.qemu);
        if let Some(dir) = &self.data_dir {
            cmd.arg("-L").arg(dir);
        }
        cmd.args(["-M", "microvm,acpi=off,x-option-roms=off,rtc=off"])
            .args(["-accel", "kvm", "-cpu", "host"])
            .args([
                "-smp",
                &self.vcpus.to_string(),
                "-m",
                &format!("{}M", self.mem_mib),
            ])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            // reboot=t: QEMU microvm has no i8042 reset path fast enough to
            // compare (the kernel would poll port 0x64 ~650k times).
            .arg("-append")
            .arg(self.cmdline.render("t"))
            .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")]);
        if let Some(image) = &self.image {
            let mut drive =
                std::ffi::OsString::from("if=none,id=image,format=raw,readonly=on,file=");
            drive.push(image);
            cmd.arg("-drive")
                .arg(drive)
                .args(["-device", "virtio-blk-device,drive=image"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }
}

/// Polls the agent of the QEMU VM with guest CID `cid` until it answers.
fn wait_for_qemu_pong(
    guard: &mut ChildGuard,
    cid: u32,
    deadline: Instant,
) -> Result<(), BootError> {
    wait_for_pong("qemu microvm", guard, deadline, || {
        let timeouts = (Duration::from_millis(200), Duration::from_secs(10));
        let mut sock = vsock::connect(cid, AGENT_VSOCK_PORT, timeouts.0, timeouts.1).ok()?;
        Some(client::ping(&mut sock).is_ok())
    })
}

impl QemuMicrovm {
    /// Boots one VM with guest CID `cid` and waits for its agent's pong;
    /// the guard kills QEMU (by pid) when dropped. The guest console goes
    /// to `console` when given.
    pub fn boot_ready(&self, cid: u32, console: Option<&Path>) -> Result<ChildGuard, BootError> {
        let what = "qemu microvm";
        let stdout = match console {
            Some(path) => Stdio::from(
                std::fs::File::create(path).map_err(|source| BootError::Spawn { what, source })?,
            ),
            None => Stdio::null(),
        };
        let child = self
            .command(cid)
            .stdout(stdout)
            .spawn()
            .map_err(|source| BootError::Spawn { what, source })?;
        let mut guard = ChildGuard::new(child);
        wait_for_qemu_pong(&mut guard, cid, Instant::now() + BOOT_TIMEOUT)?;
        Ok(guard)
    }
}

impl Peer for QemuMicrovm {
    fn name(&self) -> String {
        format!("qemu microvm{}", self.cmdline.name_suffix())
    }

    fn boot_once(&self, i: usize) -> Result<BootSample, BootError> {
        let what = "qemu microvm";
        let cid = CID_BASE + i as u32;
        let start = Instant::now();
        let child = self
            .command(cid)
            .spawn()
            .map_err(|source| BootError::Spawn { what, source })?;
        let mut guard = ChildGuard::new(child);
        let mark = ConsoleMark::watch(what, &mut guard)?;
        wait_for_qemu_pong(&mut guard, cid, start + BOOT_TIMEOUT)?;
        let ping = start.elapsed();
        let userspace = mark.since(start)?;

        if let Ok(mut sock) = vsock::connect(
            cid,
            AGENT_VSOCK_PORT,
            Duration::from_secs(5),
            Duration::from_secs(10),
        ) {
            let _ = client::shutdown(&mut sock);
        }
        let _ = guard.wait_or_kill(Duration::from_secs(30));
        Ok(BootSample {
            userspace,
            ping,
            vmm_setup: None,
        })
    }
}
