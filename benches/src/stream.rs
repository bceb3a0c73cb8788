//! Long vsock streams through one exec, on kiln and on QEMU microvm
//! (in-kernel vhost-vsock) booting the same kernel and initramfs: out
//! (the program writes N bytes to stdout, the host counts them) or in (the
//! host feeds N bytes to the program's stdin, the program counts them).
//! Tells kiln's userspace vsock apart from the guest and the machine when a
//! long stream breaks.
//!
//! Every stream runs under a watchdog: when no byte moves for the stall
//! limit, or the stream outlives its deadline, the watchdog records the
//! state at that moment (VMM threads, a KVM trace, kiln-vmm's device state
//! dump, whether a fresh agent connection still works and whether that
//! revives the stream, the guest console) and kills the VMM by its pid,
//! which ends every wait of the stream. If the stream still has not
//! returned a minute later, the harness prints the report and exits.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use kiln::vm_process::VmSpec;
use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, ExitStatus, AGENT_VSOCK_PORT};

use crate::diag::{self, KvmCounters};
use crate::peer::qemu::QemuMicrovm;
use crate::vm::BenchVm;
use crate::vsock;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Guest to host: the program's stdout.
    Out,
    /// Host to guest: the program's stdin.
    In,
}

/// What one stream moves and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// Bytes to move.
    pub bytes: u64,
    /// Which way.
    pub direction: Direction,
    /// Longest the whole stream may take.
    pub deadline: Duration,
    /// Longest no byte may move before the stream counts as stalled.
    pub stall: Duration,
    /// When into the stream to sample KVM's exits by reason for a second.
    pub profile_at: Option<Duration>,
}

/// Outcome of one stream.
pub struct StreamResult {
    /// VMM name.
    pub vmm: &'static str,
    /// Which way the bytes went.
    pub direction: Direction,
    /// Bytes the stream was to move.
    pub expected: u64,
    /// Bytes that moved (out: arrived on the host; in: counted by the guest,
    /// or taken by the connection when the exec failed).
    pub got: u64,
    /// Request to result (or failure).
    pub took: Duration,
    /// The failure, if any.
    pub error: Option<String>,
    /// The watchdog's report when the stream stalled or ran out of time.
    pub stall_report: Option<String>,
    /// For a stream that failed without stalling: the VMM's log and the
    /// guest console at that moment.
    pub failure_detail: Option<String>,
    /// KVM's counters over the stream (exits, injected interrupts), when
    /// debugfs is there.
    pub kvm: Option<KvmCounters>,
    /// KVM exits by reason over one second mid-stream.
    pub exit_profile: Option<String>,
}

impl StreamResult {
    /// A stream that failed before it started (the VM did not boot).
    pub fn failed(vmm: &'static str, spec: &StreamSpec, e: &anyhow::Error) -> Self {
        StreamResult {
            vmm,
            direction: spec.direction,
            expected: spec.bytes,
            got: 0,
            took: Duration::ZERO,
            error: Some(format!("{e:#}")),
            stall_report: None,
            failure_detail: None,
            kvm: None,
            exit_profile: None,
        }
    }
}

/// Bytes moved so far and when the last one moved, shared between a
/// stream and its watchdog.
struct Progress {
    start: Instant,
    bytes: AtomicU64,
    last_ms: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            bytes: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A reader of `left` zero bytes that counts what it hands out.
struct CountingZeros<'a> {
    left: u64,
    progress: &'a Progress,
}

impl Read for CountingZeros<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.left -= n as u64;
        self.progress.add(n);
        Ok(n)
    }
}

/// How long the stream may go on after the watchdog killed its VMM.
const AFTER_KILL_GRACE: Duration = Duration::from_secs(60);

/// Runs `body` under the watchdog described in the module docs. `on_stall`
/// gets the reason, must end the VMM, and returns the report.
/// What the watchdog saw: the stall report with KVM's counters at that
/// moment (a killed VM's counters leave KVM's sums), and the mid-stream
/// exit profile.
#[derive(Default)]
struct Watch {
    stall: Option<(String, Option<KvmCounters>)>,
    profile: Option<String>,
}

/// Returns the body's result and what the watchdog saw.
fn watched<T>(
    spec: &StreamSpec,
    progress: &Progress,
    on_stall: impl FnOnce(&str) -> String + Send,
    body: impl FnOnce() -> T,
) -> (T, Watch) {
    std::thread::scope(|scope| {
        let dog = scope.spawn(move || {
            let mut watch = Watch::default();
            while !progress.done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                if watch.profile.is_none()
                    && spec.profile_at.is_some_and(|at| progress.start.elapsed() >= at)
                {
                    watch.profile = Some(diag::kvm_exit_profile(Duration::from_secs(1)));
                }
                let why = if progress.idle() >= spec.stall {
                    format!(
                        "no byte moved for {:?} (at {} of {} bytes)",
                        spec.stall,
                        progress.bytes(),
                        spec.bytes
                    )
                } else if progress.start.elapsed() >= spec.deadline {
                    format!(
                        "not done after {:?} (at {} of {} bytes)",
                        spec.deadline,
                        progress.bytes(),
                        spec.bytes
                    )
                } else {
                    continue;
                };
                if progress.done.load(Ordering::SeqCst) {
                    break;
                }
                eprintln!("stream watchdog: {why}; collecting state, then killing the VMM");
                let counters = KvmCounters::read();
                let report = on_stall(&why);
                let killed_at = Instant::now();
                while !progress.done.load(Ordering::SeqCst) {
                    if killed_at.elapsed() > AFTER_KILL_GRACE {
                        eprintln!("{report}");
                        eprintln!(
                            "stream watchdog: the stream did not end {AFTER_KILL_GRACE:?} after its VMM was killed; giving up"
                        );
                        std::process::exit(3);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                watch.stall = Some((report, counters));
                break;
            }
            watch
        });
        let out = body();
        progress.done.store(true, Ordering::SeqCst);
        let watch = dog.join().unwrap_or_default();
        (out, watch)
    })
}

fn request(spec: &StreamSpec) -> ExecRequest {
    let (script, stdin) = match spec.direction {
        Direction::Out => (format!("head -c {} /dev/zero", spec.bytes), false),
        Direction::In => ("wc -c".to_string(), true),
    };
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script],
        stdin,
        timeout_ms: Some(spec.deadline.as_millis() as u64),
        max_output_bytes: Some(spec.bytes + 1),
        ..Default::default()
    }
}

/// What an exec's result says about the stream: bytes moved, failure.
fn outcome(
    spec: &StreamSpec,
    progress: &Progress,
    stdout: &[u8],
    res: std::result::Result<ExitStatus, String>,
) -> (u64, Option<String>) {
    let failure = match res {
        Ok(status) if status.code == Some(0) => None,
        Ok(status) => Some(format!("{status:?}")),
        Err(e) => Some(e),
    };
    match spec.direction {
        Direction::Out => {
            let got = progress.bytes();
            let short = (failure.is_none() && got != spec.bytes)
                .then(|| format!("{got} bytes arrived, not {}", spec.bytes));
            (got, failure.or(short))
        }
        Direction::In => {
            let text = String::from_utf8_lossy(stdout);
            match (failure, text.trim().parse::<u64>()) {
                (None, Ok(n)) if n == spec.bytes => (n, None),
                (None, Ok(n)) => (n, Some(format!("the guest counted {n} bytes"))),
                (None, Err(_)) => (0, Some(format!("unexpected output {text:?}"))),
                (Some(e), _) => (progress.bytes(), Some(e)),
            }
        }
    }
}

fn kill(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not
        // reaped (its owner waits for it only after the stream returns).
        unsafe { libc::kill(pid, signal) };
    }
}

/// The report, and KVM's counters at the end of the stream: when the
/// watchdog fired, those it read before killing the VMM.
fn split_stall(
    stall: Option<(String, Option<KvmCounters>)>,
) -> (Option<String>, Option<KvmCounters>) {
    match stall {
        Some((report, counters)) => (Some(report), counters),
        None => (None, KvmCounters::read()),
    }
}

/// The part of a stall report that does not depend on the VMM: its threads
/// and a KVM trace.
fn common_report(why: &str, what: &str, pid: Option<u32>) -> String {
    let mut r = format!("{what} stream stalled: {why}\n{what} threads:\n");
    r.push_str(&pid.map_or_else(|| "  no pid\n".into(), diag::threads));
    r.push_str("kvm trace (1 s):\n");
    r.push_str(&diag::kvm_trace(Duration::from_secs(1)));
    r
}

/// Tries a fresh agent connection while the stream is stalled, then says
/// whether the stream moved again afterwards.
fn probe_fresh_connection(
    progress: &Progress,
    ping: impl FnOnce() -> std::result::Result<String, String>,
) -> String {
    let before = progress.bytes();
    let answer = ping();
    std::thread::sleep(Duration::from_secs(3));
    let after = progress.bytes();
    format!(
        "fresh agent connection: {}; the stream {} afterwards ({before} -> {after} bytes)\n",
        match answer {
            Ok(s) => format!("answered ({s})"),
            Err(e) => format!("FAILED: {e}"),
        },
        if after > before {
            "MOVED AGAIN"
        } else {
            "stayed still"
        }
    )
}

/// Logs kiln-vmm's device state (SIGUSR1) and returns what it wrote.
fn kiln_state_dump(vm: &BenchVm) -> String {
    let log = vm.log_path();
    let from = std::fs::metadata(log).map_or(0, |m| m.len());
    kill(Some(vm.pid()), libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Streams through a kiln VM booted from `spec` (its console goes to
/// `console`).
pub fn kiln(vm_spec: &VmSpec, spec: &StreamSpec, console: &Path) -> Result<StreamResult> {
    let mut vm_spec = vm_spec.clone();
    let _ = std::fs::remove_file(console);
    vm_spec.config.serial_log = Some(console.to_path_buf());
    let vm = BenchVm::boot(&vm_spec, Duration::from_secs(120)).map_err(|e| {
        e.context(format!(
            "guest console (last 30 lines):\n{}",
            diag::tail(console, 30)
        ))
    })?;
    let progress = Progress::new();
    let kvm_before = KvmCounters::read();
    let mut stdout = Vec::new();
    let vm_ref = &vm;
    let on_stall = |why: &str| {
        let mut r = common_report(why, "kiln", Some(vm_ref.pid()));
        r.push_str("kiln-vmm state dump:\n");
        r.push_str(&kiln_state_dump(vm_ref));
        r.push_str(&probe_fresh_connection(&progress, || {
            let mut s = vm_ref.connect().map_err(|e| e.to_string())?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            client::ping(&mut s)
                .map(|p| format!("uptime {} ms", p.uptime_ms))
                .map_err(|e| e.to_string())
        }));
        r.push_str("kiln-vmm state dump after the fresh connection:\n");
        r.push_str(&kiln_state_dump(vm_ref));
        r.push_str("guest console (last 40 lines):\n");
        r.push_str(&diag::tail(console, 40));
        kill(Some(vm_ref.pid()), libc::SIGKILL);
        r
    };
    let (res, stall_report) = watched(spec, &progress, on_stall, || -> Result<_, String> {
        let stdin = CountingZeros {
            left: spec.bytes,
            progress: &progress,
        };
        let mut reader = vm_ref.connect().map_err(|e| e.to_string())?;
        let writer = reader.try_clone().map_err(|e| e.to_string())?;
        client::exec_duplex(
            &mut reader,
            writer,
            &request(spec),
            stdin,
            |b| match spec.direction {
                Direction::Out => progress.add(b.len()),
                Direction::In => stdout.extend_from_slice(b),
            },
            |_| {},
        )
        .map_err(|e| e.to_string())
    });
    let took = progress.start.elapsed();
    let exit_profile = stall_report.profile;
    let (stall_report, kvm_after) = split_stall(stall_report.stall);
    let kvm = kvm_after.zip(kvm_before).map(|(a, b)| a.since(b));
    let res = res.map_err(|e| format!("{e} ({})", vm.vmm_report()));
    let (got, error) = outcome(spec, &progress, &stdout, res);
    let failure_detail = (error.is_some() && stall_report.is_none()).then(|| {
        format!(
            "kiln-vmm log (last 30 lines):\n{}guest console (last 40 lines):\n{}",
            diag::tail(vm.log_path(), 30),
            diag::tail(console, 40)
        )
    });
    let _ = vm.shutdown(Duration::from_secs(30));
    Ok(StreamResult {
        vmm: "kiln",
        direction: spec.direction,
        expected: spec.bytes,
        got,
        took,
        error,
        stall_report,
        failure_detail,
        kvm,
        exit_profile,
    })
}

/// Streams through a QEMU microvm with guest CID `cid` (its console goes
/// to `console`).
pub fn qemu(
    peer: &QemuMicrovm,
    cid: u32,
    spec: &StreamSpec,
    console: &Path,
) -> Result<StreamResult> {
    let mut guard = peer.boot_ready(cid, Some(console))?;
    let pid = Some(guard.pid());
    let io_timeout = spec.deadline + Duration::from_secs(30);
    let sock = vsock::connect(cid, AGENT_VSOCK_PORT, Duration::from_secs(5), io_timeout)?;
    let mut reader = sock.try_clone()?;
    let progress = Progress::new();
    let kvm_before = KvmCounters::read();
    let mut stdout = Vec::new();
    let on_stall = |why: &str| {
        let mut r = common_report(why, "qemu microvm", pid);
        r.push_str(&probe_fresh_connection(&progress, || {
            let timeout = Duration::from_secs(10);
            let mut s = vsock::connect(cid, AGENT_VSOCK_PORT, timeout, timeout)
                .map_err(|e| e.to_string())?;
            client::ping(&mut s)
                .map(|p| format!("uptime {} ms", p.uptime_ms))
                .map_err(|e| e.to_string())
        }));
        r.push_str("guest console (last 40 lines):\n");
        r.push_str(&diag::tail(console, 40));
        kill(pid, libc::SIGKILL);
        r
    };
    let (res, stall_report) = watched(spec, &progress, on_stall, || {
        let stdin = CountingZeros {
            left: spec.bytes,
            progress: &progress,
        };
        client::exec_duplex(
            &mut reader,
            sock,
            &request(spec),
            stdin,
            |b| match spec.direction {
                Direction::Out => progress.add(b.len()),
                Direction::In => stdout.extend_from_slice(b),
            },
            |_| {},
        )
    });
    let took = progress.start.elapsed();
    let exit_profile = stall_report.profile;
    let (stall_report, kvm_after) = split_stall(stall_report.stall);
    let kvm = kvm_after.zip(kvm_before).map(|(a, b)| a.since(b));
    let (got, error) = outcome(spec, &progress, &stdout, res.map_err(|e| e.to_string()));
    let failure_detail = (error.is_some() && stall_report.is_none()).then(|| {
        format!(
            "guest console (last 40 lines):\n{}",
            diag::tail(console, 40)
        )
    });
    let timeout = Duration::from_secs(5);
    if let Ok(mut s) = vsock::connect(cid, AGENT_VSOCK_PORT, timeout, timeout) {
        let _ = client::shutdown(&mut s);
    }
    let _ = guard.wait_or_kill(Duration::from_secs(30));
    Ok(StreamResult {
        vmm: "qemu microvm",
        direction: spec.direction,
        expected: spec.bytes,
        got,
        took,
        error,
        stall_report,
        failure_detail,
        kvm,
        exit_profile,
    })
}

/// Where stream `i` of `vmm` keeps its guest console.
pub fn console_path(dir: &Path, vmm: &str, i: usize) -> PathBuf {
    dir.join(format!("{vmm}-{i}.console"))
}
