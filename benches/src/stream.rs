//! Long vsock streams: one exec writes N MiB to stdout and the host counts
//! what arrives, on kiln and on QEMU microvm (in-kernel vhost-vsock) booting
//! the same kernel and initramfs. Tells kiln's userspace vsock apart from
//! the guest and the machine when a long stream breaks.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln::vm_process::{VmProcess, VmSpec};
use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, ExitStatus, AGENT_VSOCK_PORT};

use crate::peer::qemu::QemuMicrovm;
use crate::vsock;

/// Outcome of one stream.
pub struct StreamResult {
    /// VMM name.
    pub vmm: &'static str,
    /// Bytes the program was to write.
    pub expected: u64,
    /// Bytes that arrived.
    pub got: u64,
    /// Request to result (or failure).
    pub took: Duration,
    /// The failure, if any.
    pub error: Option<String>,
}

/// Why a stream's exec failed, or `None` when it exited 0.
fn failure(res: std::result::Result<ExitStatus, String>) -> Option<String> {
    match res {
        Ok(status) if status.code == Some(0) => None,
        Ok(status) => Some(format!("{status:?}")),
        Err(e) => Some(e),
    }
}

fn request(bytes: u64, timeout: Duration) -> ExecRequest {
    ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("head -c {bytes} /dev/zero"),
        ],
        timeout_ms: Some(timeout.as_millis() as u64),
        max_output_bytes: Some(bytes + 1),
        ..Default::default()
    }
}

/// Streams `bytes` through a kiln VM booted from `spec`.
pub fn kiln(spec: &VmSpec, bytes: u64, timeout: Duration) -> Result<StreamResult> {
    let mut vm = VmProcess::spawn(spec)?;
    vm.wait_ready(Duration::from_secs(120))
        .context("booting kiln")?;
    let mut got = 0u64;
    let start = Instant::now();
    let res = vm.exec(
        &request(bytes, timeout),
        std::io::empty(),
        |b| got += b.len() as u64,
        |_| {},
    );
    let took = start.elapsed();
    let error = failure(res.map_err(|e| format!("{e} ({})", vm.vmm_report())));
    let _ = vm.shutdown(Duration::from_secs(30));
    Ok(StreamResult {
        vmm: "kiln",
        expected: bytes,
        got,
        took,
        error,
    })
}

/// Streams `bytes` through a QEMU microvm with guest CID `cid`.
pub fn qemu(peer: &QemuMicrovm, cid: u32, bytes: u64, timeout: Duration) -> Result<StreamResult> {
    let mut guard = peer.boot_ready(cid)?;
    let io_timeout = timeout + Duration::from_secs(30);
    let mut sock = vsock::connect(cid, AGENT_VSOCK_PORT, Duration::from_secs(5), io_timeout)?;
    let mut got = 0u64;
    let start = Instant::now();
    let res = client::exec(
        &mut sock,
        &request(bytes, timeout),
        &[],
        |b| got += b.len() as u64,
        |_| {},
    );
    let took = start.elapsed();
    let error = failure(res.map_err(|e| e.to_string()));
    if let Ok(mut s) = vsock::connect(cid, AGENT_VSOCK_PORT, Duration::from_secs(5), io_timeout) {
        let _ = client::shutdown(&mut s);
    }
    let _ = guard.wait_or_kill(Duration::from_secs(30));
    Ok(StreamResult {
        vmm: "qemu microvm",
        expected: bytes,
        got,
        took,
        error,
    })
}
