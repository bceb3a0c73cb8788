//! A hostile guest against a real, jailed kiln-vmm: a program in the guest
//! floods the vsock device (128 connections to a host port whose listener
//! accepts and never reads, sends on all of them, connects to ports nobody
//! listens on for ten seconds, closes with data in flight). kiln-vmm must
//! keep running, its memory must stay within the guest's RAM plus a fixed
//! allowance (sampled from /proc while the flood runs), its log must grow
//! at a bounded rate, and the guest's agent must still answer after.
//!
//! The VM's run directory is owner-only (0700, root) and the jailed VMM
//! runs as its own uid, so it cannot reach `<uds>_<port>` there: every
//! guest-initiated connection is reset. The test opens the directory
//! (0755) so the flood reaches its host port. (The flood once killed
//! kiln-vmm: freeing its buffers made glibc's malloc open a /proc file in
//! the filtered virtio thread; `openat` is now refused with EACCES.)
//!
//! Nonsense descriptors, rings and register writes need a guest kernel
//! module or /dev/mem, which the test guest does not have; they are
//! covered at the device level (vmm `hostile` unit tests) and by the
//! `virtio_mmio` fuzz target.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_agent::protocol::ExecRequest;
use kiln_e2e::vm::{boot_python_node, sh, TestVm};
use kiln_vmm::jail::inspect;

/// What the VMM may use beyond guest RAM (its own heap, stacks, buffers).
const VMM_ALLOWANCE_KIB: u64 = 96 * 1024;
/// Lines a second one guest-triggered call site may log (`LogLimit::BURST`).
const LOG_BURST: usize = kiln_vmm::devices::virtio::LogLimit::BURST as usize;

/// The guest's flood, bounded in time: each phase stops at its deadline.
const FLOOD: &str = r#"
import socket, time
AF = socket.AF_VSOCK
probe = socket.socket(AF, socket.SOCK_STREAM)
probe.settimeout(20)
try:
    probe.connect((2, 5000))
    probe_err = 0
except OSError as e:
    probe_err = e.errno
socks = [probe]
for i in range(127):
    s = socket.socket(AF, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((2, 5000))
    except OSError:
        pass
    socks.append(s)
time.sleep(1)
buf = b"x" * 65536
sent = 0
end = time.time() + 10
while time.time() < end:
    for s in socks:
        try:
            sent += s.send(buf)
        except OSError:
            pass
refused = 0
end = time.time() + 10
port = 20000
while time.time() < end:
    s = socket.socket(AF, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((2, port))
    except OSError:
        refused += 1
    s.close()
    port += 1
for s in socks:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
print(sent, refused, probe_err)
"#;

fn the_vmm(vm: &TestVm) -> i32 {
    let children = inspect::children(vm.pid() as i32);
    assert_eq!(children.len(), 1, "one VMM under kiln-vmm: {children:?}");
    children[0]
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn log_lines(vm: &TestVm) -> usize {
    fs::read_to_string(vm.process().log_path())
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn vsock_flood_from_the_guest_is_survived() {
    let vm = boot_python_node();
    let vmm = the_vmm(&vm);
    // A host service that accepts the guest's connections and never reads.
    // Let the jailed VMM (its own uid) through to `<uds>_<port>`.
    let run_dir = vm.vsock_uds().parent().expect("a run dir").to_owned();
    fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o755)).expect("open the run dir");
    let lpath = format!("{}_5000", vm.vsock_uds().display());
    let _ = fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).expect("bind the host port");
    listener.set_nonblocking(true).expect("nonblocking");
    // The jailed VMM runs as its own uid: it needs write permission to connect.
    fs::set_permissions(&lpath, fs::Permissions::from_mode(0o777)).expect("chmod the host port");
    let accepted = Arc::new(AtomicU64::new(0));
    let max_rss = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (accepted, max_rss, stop) = (accepted.clone(), max_rss.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                while let Ok((s, _)) = listener.accept() {
                    held.push(s);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(kib) = rss_kib(vmm) {
                    max_rss.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let lines_before = log_lines(&vm);
    let started = Instant::now();
    let req = ExecRequest {
        argv: vec!["python3".into(), "-c".into(), FLOOD.into()],
        timeout_ms: Some(60_000),
        ..ExecRequest::default()
    };
    let out = vm
        .try_exec(req, b"")
        .unwrap_or_else(|e| panic!("the flood's exec failed: {e}; {}", vm.vmm_report()));
    // Whole seconds of the limiter's clock a run of d seconds touches:
    // up to floor(d) + 2.
    let secs = started.elapsed().as_secs() as usize + 2;
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let _ = fs::remove_file(&lpath);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code == Some(0),
        "flood failed: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<u64> = report
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "flood report {report:?}");
    assert!(counts[1] > 0, "no refused connects: {report}");
    assert_eq!(
        counts[2], 0,
        "the guest could not reach the host port: {report}"
    );
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "the host accepted nothing"
    );

    // Still alive and serving.
    assert!(
        std::path::Path::new(&format!("/proc/{vmm}")).exists(),
        "kiln-vmm died: {}",
        vm.vmm_report()
    );
    vm.ping().expect("the agent answers after the flood");
    assert_eq!(sh(&vm, "echo alive").stdout, b"alive\n");

    let guest_kib = 512 * 1024;
    let max = max_rss.load(Ordering::Relaxed);
    assert!(max > 0, "no RSS samples of {vmm}");
    assert!(
        max <= guest_kib + VMM_ALLOWANCE_KIB,
        "kiln-vmm RSS peaked at {max} KiB (guest RAM {guest_kib} KiB)"
    );
    let logged = log_lines(&vm) - lines_before;
    // A dozen guest-triggerable call sites at most, each rate-limited.
    let cap = 12 * LOG_BURST * secs;
    assert!(logged <= cap, "{logged} log lines in {secs}s (cap {cap})");
    eprintln!(
        "flood: sent {} bytes, {} refused connects, first connect errno {}, {} accepted \
         by the host; kiln-vmm peak RSS {max} KiB, {logged} log lines in {secs}s",
        counts[0],
        counts[1],
        counts[2],
        accepted.load(Ordering::Relaxed)
    );
}
