//! Snapshot, restore and clones (issue 12): a booted VM with state in its
//! guest is snapshotted and resumed, two clones restored from the snapshot
//! at once answer, see that state, and are distinct machines (RNG output,
//! `uuid4()`s) with the right time; then restore latency against cold boot.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln::vm_process::SpawnOptions;
use kiln_e2e::daemon::scratch;
use kiln_e2e::vm::{boot_spec_with, ok, python_node_spec, restore_spec, sh, spec, Output, TestVm};

/// A fresh directory a VM's snapshot goes to.
fn snapshot_dir(name: &str) -> std::path::PathBuf {
    let dir = scratch(name).join("snapshot");
    std::fs::create_dir_all(&dir).expect("snapshot dir");
    dir
}

/// Spawn options that make snapshots go to `dir`.
fn snapshot_to(dir: &Path) -> SpawnOptions {
    SpawnOptions {
        snapshot_dir: Some(dir.to_path_buf()),
        ..SpawnOptions::default()
    }
}

/// Restores a clone and waits until it is resumed and answers (a clone
/// whose guest crashed is restored once more: [`restore_spec`]).
fn restore(spec: &kiln::vm_process::VmSpec, dir: &Path) -> (TestVm, Duration) {
    let start = Instant::now();
    let vm = restore_spec(spec, dir);
    (vm, start.elapsed())
}

/// The jailed VMM's own process (the supervisor's child) and its RSS:
/// total, anonymous, file-backed, shared memory.
fn vmm_rss_kib(supervisor: u32) -> Option<(u64, u64, u64, u64)> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    let pid = children
        .split_whitespace()
        .next()
        .map_or(supervisor.to_string(), str::to_string);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")?,
        field("RssShmem:")?,
    ))
}

fn guest_unix_secs(vm: &TestVm) -> u64 {
    ok(&sh(vm, "date +%s")).trim().parse().expect("date +%s")
}

fn host_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn clones_share_state_but_not_entropy_or_time() {
    let spec = python_node_spec();
    let dir = snapshot_dir("clones");
    let options = snapshot_to(&dir);
    let cold = Instant::now();
    let source = boot_spec_with(&spec, &options);
    let cold = cold.elapsed();
    // State the clones must inherit, and the RNG warmed up before.
    ok(&sh(&source, "echo kept-in-memory > /tmp/left-by-source"));
    ok(&exec_python(&source, "import uuid; print(uuid.uuid4())"));

    let report = source.snapshot(true).expect("snapshot and resume");
    assert!(report.resumed);
    assert!(dir.join("vm.state").exists() && dir.join("vm.mem").exists());
    // The source runs on after the snapshot, its state intact.
    assert_eq!(
        ok(&sh(&source, "cat /tmp/left-by-source")),
        "kept-in-memory\n"
    );

    // Two clones of one snapshot, restored at the same time.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| restore(&spec, &dir));
        let b = s.spawn(|| restore(&spec, &dir));
        (a.join().expect("clone a"), b.join().expect("clone b"))
    });
    let ((a, a_ready), (b, b_ready)) = (a, b);
    for vm in [&a, &b] {
        assert_eq!(ok(&sh(vm, "cat /tmp/left-by-source")), "kept-in-memory\n");
    }
    let random = |vm: &TestVm| {
        ok(&sh(
            vm,
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
        ))
    };
    let (ra, rb, rs) = (random(&a), random(&b), random(&source));
    assert_eq!(ra.len(), 64, "{ra}");
    assert!(ra != rb && ra != rs && rb != rs, "{ra} {rb} {rs}");
    let uuid = |vm: &TestVm| ok(&exec_python(vm, "import uuid; print(uuid.uuid4())"));
    let (ua, ub) = (uuid(&a), uuid(&b));
    assert_ne!(ua, ub, "clones made the same uuid4");
    for (name, vm) in [("a", &a), ("b", &b)] {
        let (guest, host) = (guest_unix_secs(vm), host_unix_secs());
        assert!(
            guest.abs_diff(host) <= 5,
            "clone {name}: guest clock {guest}, host {host}"
        );
    }
    // The source keeps working next to its clones.
    assert_eq!(ok(&sh(&source, "echo still-here")), "still-here\n");

    let rss = |vm: &TestVm| vmm_rss_kib(vm.pid());
    eprintln!(
        "snapshot: cold boot to agent ready {cold:?}; snapshot {} us (vcpus paused in {} us, {} MiB of memory written, state {} bytes); clones ready in {a_ready:?} and {b_ready:?}; VMM RSS (total, anon, file, shmem KiB; a memory file on tmpfs counts as shmem): source {:?}, clone a {:?}, clone b {:?}",
        report.total_us,
        report.pause_us,
        report.memory_bytes_written >> 20,
        report.state_bytes,
        rss(&source),
        rss(&a),
        rss(&b),
    );
}

fn exec_python(vm: &TestVm, code: &str) -> Output {
    kiln_e2e::vm::exec(vm, &["python3", "-c", code], None)
}

/// Snapshot restore to agent ready against cold boot to agent ready, in
/// the same run (printed; the targets are ratios).
#[test]
fn restore_latency_against_cold_boot() {
    const RESTORES: usize = 10;
    const COLD_BOOTS: usize = 3;
    let spec = spec();
    let dir = snapshot_dir("latency");
    let options = snapshot_to(&dir);
    let mut cold = Vec::new();
    for _ in 0..COLD_BOOTS {
        let start = Instant::now();
        let vm = boot_spec_with(&spec, &SpawnOptions::default());
        cold.push(start.elapsed());
        drop(vm);
    }
    let source = boot_spec_with(&spec, &options);
    let report = source.snapshot(false).expect("snapshot and stop");
    assert!(!report.resumed);
    drop(source);
    let mut restores = Vec::new();
    for i in 0..RESTORES {
        let spawned = SystemTime::now();
        let (vm, ready) = restore(&spec, &dir);
        assert_eq!(ok(&sh(&vm, "echo up")), "up\n");
        restores.push(ready);
        // Where the time went, from the VMM's own report (written at exit).
        let exit = vm.shutdown(Duration::from_secs(60)).expect("shutdown");
        if let Some(r) = exit.report {
            let spawned_us = spawned
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            eprintln!(
                "restore {i}: ready {ready:?}; exec to VMM start {} us, VM built at {:?} us, vCPU 0 running at {:?} us (from VMM start); exit {}",
                r.start_unix_us.saturating_sub(spawned_us),
                r.built_us,
                r.kernel_entry_us,
                r.exit,
            );
        }
    }
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    eprintln!(
        "restore latency: snapshot {} us; cold boot to agent ready p50 {:?} (n={COLD_BOOTS}); restore to agent ready p50 {:?} p95 {:?} min {:?} max {:?} (n={RESTORES})",
        report.total_us,
        pct(&mut cold, 50),
        pct(&mut restores, 50),
        pct(&mut restores, 95),
        restores[0],
        restores[restores.len() - 1],
    );
}

/// A connection to the agent and the host port the VMM gave it.
fn connect_with_port(vm: &TestVm) -> (std::os::unix::net::UnixStream, u32) {
    kiln_vmm::vm::hybrid_vsock::connect_with_port(
        vm.vsock_uds(),
        kiln_agent::protocol::AGENT_VSOCK_PORT,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("connect: {e}; {}", vm.vmm_report()))
}

/// A clone's host vsock ports go on after its snapshot's: the restored
/// guest may still hold a socket on a port the source used (here one whose
/// close was under way, the VMM still holding output the host had not
/// read), and a new connection on that port would be reset by it.
#[test]
fn a_clone_reuses_no_host_port_its_snapshot_used() {
    let spec = spec();
    let dir = snapshot_dir("ports");
    let options = snapshot_to(&dir);
    let source = boot_spec_with(&spec, &options);
    let (mut unread, unread_port) = connect_with_port(&source);
    let request = kiln_agent::protocol::ExecRequest {
        argv: vec![
            "head".into(),
            "-c".into(),
            "600000".into(),
            "/dev/zero".into(),
        ],
        env: Vec::new(),
        cwd: None,
        stdin: false,
        timeout_ms: Some(30_000),
        max_output_bytes: None,
    };
    kiln_agent::protocol::write_message(&mut unread, &kiln_agent::protocol::Message::Exec(request))
        .expect("exec request");
    // The program ends and the agent closes while its output waits in the
    // VMM for a host that does not read.
    std::thread::sleep(Duration::from_secs(1));
    let (mut last, last_port) = connect_with_port(&source);
    kiln_agent::client::ping(&mut last).expect("source ping");
    drop(last);
    source.snapshot(false).expect("snapshot and stop");
    drop(unread);
    drop(source);

    let (clone, _) = restore(&spec, &dir);
    let (mut first, first_port) = connect_with_port(&clone);
    assert!(
        first_port > unread_port.max(last_port),
        "the clone's host port {first_port} was used before the snapshot ({unread_port}, {last_port})"
    );
    kiln_agent::client::ping(&mut first).expect("clone ping");
    drop(first);
    assert_eq!(ok(&sh(&clone, "echo up")), "up\n");
}
