//! Moving files in and out of a sandbox: streamed, checksummed, confined.

use std::io::{self, Read, Write};
use std::time::Duration;

use kiln::vm_process::VmProcessError;
use kiln_agent::protocol::ErrorCode;
use kiln_e2e::vm::{boot_python_node, boot_spec, exec, python_node_spec, sh};
use sha2::{Digest, Sha256};

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

/// A sink that only hashes and counts.
#[derive(Default)]
struct HashSink {
    hasher: Sha256,
    len: u64,
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn agent_code(e: &VmProcessError) -> Option<ErrorCode> {
    match e {
        VmProcessError::Files { source, .. } => source.agent_code(),
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
        let w = vm.upload("data/blob.bin", None, &data[..]).expect("upload");
        assert_eq!(w.size, len);
        let mut back = Vec::new();
        vm.download("data/blob.bin", &mut back).expect("download");
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
    let mut passwd = Vec::new();
    vm.download("../../etc/passwd", &mut passwd)
        .expect("read the sandbox's own /etc/passwd");
    assert!(String::from_utf8_lossy(&passwd).contains("sandbox:x:1000"));
    let missing = vm
        .download("no/such/file", io::sink())
        .expect_err("missing file");
    assert_eq!(agent_code(&missing), Some(ErrorCode::NotFound), "{missing}");
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

/// Uploads `len` pseudo-random bytes, checks them in the guest, downloads
/// them back; both sides stream and checksum without holding the file.
fn stream_both_ways(len: u64) {
    let vm = boot_python_node();
    let mut sent = HashSink::default();
    let mut tee = TeeRead {
        inner: Noise {
            state: 42,
            left: len,
        },
        sink: &mut sent,
    };
    let w = vm
        .upload("big.bin", None, &mut tee)
        .unwrap_or_else(|e| panic!("upload: {e:?} ({})", vm.vmm_report()));
    assert_eq!(w.size, len);
    let sent_sum: [u8; 32] = sent.hasher.finalize().into();
    assert_eq!(w.sha256, sent_sum);
    let out = sh(&vm, "sha256sum /home/sandbox/big.bin | cut -d' ' -f1");
    let hex: String = sent_sum.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex);
    let mut back = HashSink::default();
    let d = vm
        .download("big.bin", &mut back)
        .unwrap_or_else(|e| panic!("download: {e:?} ({})", vm.vmm_report()));
    assert_eq!((d.size, back.len), (len, len));
    let back_sum: [u8; 32] = back.hasher.finalize().into();
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

struct TeeRead<'a, R> {
    inner: R,
    sink: &'a mut HashSink,
}

impl<R: Read> Read for TeeRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[test]
fn disk_full_is_a_clean_error_and_leaves_no_file() {
    let mut spec = python_node_spec();
    spec.kernel_args = Some("kiln.overlay_mib=32".into());
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
