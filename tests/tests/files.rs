//! Moving files in and out of a sandbox: streamed, checksummed, confined.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kiln::vm_process::{AgentError, VmProcessError};
use kiln_agent::protocol::ErrorCode;
use kiln_e2e::vm::{boot_python_node, boot_spec, exec, python_node_spec, sh};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SHUTDOWN: Duration = Duration::from_secs(30);

/// A deterministic pseudo-random byte stream of `len` bytes (xorshift), so
/// hundreds of MiB can be sent without holding them.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl AsyncRead for Noise {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = Read::read(self.get_mut(), buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// A sink that only hashes and counts (shared, so the test can read it
/// after the download consumed the sink).
#[derive(Default, Clone)]
struct HashSink(Arc<Mutex<(Sha256, u64)>>);

impl HashSink {
    fn finish(&self) -> ([u8; 32], u64) {
        let state = self.0.lock().expect("hash sink");
        (state.0.clone().finalize().into(), state.1)
    }
}

impl AsyncWrite for HashSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock().expect("hash sink");
        state.0.update(buf);
        state.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn agent_code(e: &VmProcessError) -> Option<ErrorCode> {
    match e {
        VmProcessError::Agent(e @ AgentError::Files { .. }) => e.agent_code(),
        _ => None,
    }
}

#[test]
fn round_trips_names_and_confinement() {
    let vm = boot_python_node();
    // Random binary data, small and odd-sized, incl. empty.
    for len in [0u64, 1, 65_537, 3 * 1024 * 1024 + 7] {
        let mut data = Vec::new();
        Noise {
            state: len + 1,
            left: len,
        }
        .read_to_end(&mut data)
        .expect("noise");
        let w = vm
            .upload("data/blob.bin", None, io::Cursor::new(data.clone()))
            .expect("upload");
        assert_eq!(w.size, len);
        let back = vm.download_vec("data/blob.bin").expect("download");
        assert!(back == data, "round trip of {len} bytes differs");
    }
    // Names with spaces and unicode; Python reads what the files API wrote.
    vm.upload(
        "dir with space/naïve ✓ 日本.txt",
        None,
        &b"hello from the host\n"[..],
    )
    .expect("upload unicode");
    let out = exec(
        &vm,
        &[
            "python3",
            "-c",
            "print(open('/home/sandbox/dir with space/naïve ✓ 日本.txt').read(), end='')",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the host\n"
    );
    // A path that climbs out lands inside the sandbox root, where the
    // sandbox user may not write /etc.
    let err = vm
        .upload("../../../../etc/kiln-escape", None, &b"x"[..])
        .expect_err("writing /etc as the sandbox user must fail");
    assert_eq!(agent_code(&err), Some(ErrorCode::PermissionDenied), "{err}");
    let passwd = vm
        .download_vec("../../etc/passwd")
        .expect("read the sandbox's own /etc/passwd");
    assert!(String::from_utf8_lossy(&passwd).contains("sandbox:x:1000"));
    let missing = vm
        .download("no/such/file", tokio::io::sink())
        .expect_err("missing file");
    assert_eq!(agent_code(&missing), Some(ErrorCode::NotFound), "{missing}");
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

/// Uploads `len` pseudo-random bytes, checks them in the guest, downloads
/// them back; both sides stream and checksum without holding the file.
fn stream_both_ways(len: u64) {
    let vm = boot_python_node();
    let noise = || Noise {
        state: 42,
        left: len,
    };
    // The same seed makes the same bytes: hash them on the side.
    let sent = HashSink::default();
    let mut expected = sent.clone();
    vm.block_on(tokio::io::copy(&mut noise(), &mut expected))
        .expect("hash the noise");
    let (sent_sum, _) = sent.finish();
    let w = vm
        .upload("big.bin", None, noise())
        .unwrap_or_else(|e| panic!("upload: {e:?} ({})", vm.vmm_report()));
    assert_eq!(w.size, len);
    assert_eq!(w.sha256, sent_sum);
    let out = sh(&vm, "sha256sum /home/sandbox/big.bin | cut -d' ' -f1");
    let hex: String = sent_sum.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex);
    let back = HashSink::default();
    let d = vm
        .download("big.bin", back.clone())
        .unwrap_or_else(|e| panic!("download: {e:?} ({})", vm.vmm_report()));
    let (back_sum, back_len) = back.finish();
    assert_eq!((d.size, back_len), (len, len));
    assert_eq!(back_sum, sent_sum);
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn sixteen_mib_streams_both_ways() {
    stream_both_ways(16 << 20);
}

/// Known bug (README "Known problems"): in the testbed, about one 200 MiB
/// round trip in ten breaks (EPIPE/ECONNRESET or a truncated frame, with
/// kiln-vmm logging nothing for the connection) or stalls (the guest's vCPU
/// spinning on a kernel spinlock), mostly when the host is busy. Run with
/// `--ignored`, or `tools/debug/transfer-loop.sh`, while chasing it.
#[test]
#[ignore = "intermittent in the testbed: the connection breaks or the guest stalls midway (README: Known problems)"]
fn two_hundred_mib_streams_both_ways() {
    stream_both_ways(200 << 20);
}

#[test]
fn disk_full_is_a_clean_error_and_leaves_no_file() {
    let mut spec = python_node_spec();
    spec.config.cmdline_extra = "kiln.overlay_mib=32".into();
    let vm = boot_spec(&spec);
    let err = vm
        .upload(
            "fill.bin",
            None,
            Noise {
                state: 7,
                left: 64 * 1024 * 1024,
            },
        )
        .expect_err("64 MiB cannot fit a 32 MiB overlay");
    assert_eq!(agent_code(&err), Some(ErrorCode::NoSpace), "{err}");
    let ls = sh(&vm, "ls -A /home/sandbox");
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).trim(),
        "",
        "a partial file was left behind"
    );
    // A program filling the disk gets ENOSPC, not a hung or dead sandbox.
    let fill = sh(
        &vm,
        "head -c 100000000 /dev/zero > /home/sandbox/fill; echo rc=$?; rm -f /home/sandbox/fill",
    );
    let text =
        String::from_utf8_lossy(&fill.stdout).into_owned() + &String::from_utf8_lossy(&fill.stderr);
    assert!(
        text.contains("No space left on device") && !text.contains("rc=0"),
        "{text}"
    );
    // The sandbox keeps working once space is there again.
    vm.upload("small.txt", None, &b"ok"[..])
        .expect("small upload after a full disk");
    let out = sh(&vm, "cat /home/sandbox/small.txt");
    assert_eq!(out.stdout, b"ok");
    vm.shutdown(SHUTDOWN).expect("shutdown");
}
