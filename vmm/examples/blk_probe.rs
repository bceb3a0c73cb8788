//! Manual virtio-blk check: runs a shell command in a booted guest through
//! its agent and prints what the guest printed.
//!
//! ```text
//! kiln-vmm --kernel guest/vmlinux --initramfs guest/initramfs.cpio \
//!     --vsock-uds /tmp/v.sock --drive /kiln/d.img &
//! blk_probe /tmp/v.sock 'cat /sys/block/vda/size'
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(uds), Some(script)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: blk_probe VSOCK_UDS 'SHELL COMMAND'");
    };
    let uds = PathBuf::from(uds);
    // The guest may still be booting: retry the connection for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match hybrid_vsock::connect(&uds, AGENT_VSOCK_PORT, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("blk_probe: waiting for the agent: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script],
        timeout_ms: Some(30_000),
        ..Default::default()
    };
    let exit = client::exec(
        &mut stream,
        &request,
        &[],
        |out| {
            let _ = std::io::stdout().write_all(out);
        },
        |err| {
            let _ = std::io::stderr().write_all(err);
        },
    )?;
    eprintln!("blk_probe: exit {exit:?}");
    std::process::exit(exit.code.unwrap_or(1));
}
