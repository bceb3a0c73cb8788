//! One command run in a kiln VM and in a QEMU microvm booting the same
//! kernel and initramfs, outputs side by side: what each VMM exposes to the
//! guest (CPUID flags, the kernel log, interrupts, clock sources) is then a
//! diff away.

use std::time::Duration;

use anyhow::{Context, Result};
use kiln::vm_process::VmSpec;
use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, AGENT_VSOCK_PORT};

use crate::peer::qemu::QemuMicrovm;
use crate::vm::BenchVm;
use crate::vsock;

fn request(argv: &[String]) -> ExecRequest {
    ExecRequest {
        argv: argv.to_vec(),
        timeout_ms: Some(60_000),
        ..Default::default()
    }
}

fn render(out: Vec<u8>, err: Vec<u8>, status: String) -> String {
    format!(
        "{}{}[{status}]\n",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

/// Runs `argv` in a fresh kiln VM; returns stdout, stderr and the status.
pub fn in_kiln(spec: &VmSpec, argv: &[String]) -> Result<String> {
    let vm = BenchVm::boot(spec, Duration::from_secs(120))?;
    let mut conn = vm.connect().context("connecting to the kiln guest")?;
    conn.set_read_timeout(Some(Duration::from_secs(70)))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client::exec(
        &mut conn,
        &request(argv),
        &[],
        |b| out.extend_from_slice(b),
        |b| err.extend_from_slice(b),
    );
    let _ = vm.shutdown(Duration::from_secs(30));
    Ok(render(out, err, format!("{status:?}")))
}

/// Runs `argv` in a fresh QEMU microvm with guest CID `cid`.
pub fn in_qemu(peer: &QemuMicrovm, cid: u32, argv: &[String]) -> Result<String> {
    let mut guard = peer.boot_ready(cid, None)?;
    let timeout = Duration::from_secs(70);
    let mut sock = vsock::connect(cid, AGENT_VSOCK_PORT, Duration::from_secs(5), timeout)?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client::exec(
        &mut sock,
        &request(argv),
        &[],
        |b| out.extend_from_slice(b),
        |b| err.extend_from_slice(b),
    );
    if let Ok(mut s) = vsock::connect(cid, AGENT_VSOCK_PORT, Duration::from_secs(5), timeout) {
        let _ = client::shutdown(&mut s);
    }
    let _ = guard.wait_or_kill(Duration::from_secs(30));
    Ok(render(out, err, format!("{status:?}")))
}
