//! A real Linux guest under kiln-vmm runs commands through its agent.

use std::time::Duration;

use kiln_agent::protocol::ExecRequest;
use kiln_e2e::vm::{boot, boot_spec, exec, exec_req, sh, spec};
use sha2::{Digest, Sha256};

const SHUTDOWN: Duration = Duration::from_secs(30);

#[test]
fn ping_exec_exit_codes_stdin_env_cwd() {
    let vm = boot();

    let out = sh(&vm, "echo hello; exit 3");
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.status.code, Some(3));
    assert!(!out.status.timed_out);

    let out = sh(&vm, "kill -9 $$");
    assert_eq!((out.status.code, out.status.signal), (None, Some(9)));

    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = exec(&vm, &["cat"], Some(&data));
    assert_eq!(out.status.code, Some(0));
    assert!(out.stdout == data, "stdin did not round-trip through cat");

    let out = exec_req(
        &vm,
        ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo $FOO; pwd".into()],
            env: vec![("FOO".into(), "bar baz".into())],
            cwd: Some("/tmp".into()),
            stdin: false,
            timeout_ms: Some(60_000),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar baz\n/tmp\n");

    let missing = ExecRequest {
        argv: vec!["/no/such/program".into()],
        env: Vec::new(),
        cwd: None,
        stdin: false,
        timeout_ms: Some(60_000),
        ..Default::default()
    };
    let err = vm
        .try_exec(missing, &[])
        .err()
        .expect("a missing program is an error, not an exit status");
    assert!(
        err.to_string().contains("cannot start"),
        "unexpected error: {err}"
    );
    // The agent keeps serving after the failed spawn.
    assert_eq!(sh(&vm, "echo still-here").stdout, b"still-here\n");

    let exit = vm.shutdown(SHUTDOWN).expect("shutdown");
    assert!(
        exit.status.is_some_and(|s| s.success()),
        "VMM did not exit cleanly: {exit:?}"
    );
}

#[test]
fn stdout_and_stderr_are_separate_and_ordered() {
    let vm = boot();
    let out = sh(
        &vm,
        "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out1\nout2\nout3\nout4\nout5\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "err1\nerr2\nerr3\nerr4\nerr5\n"
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn timeout_kills_the_whole_process_tree() {
    let vm = boot();
    let out = exec_req(
        &vm,
        ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "sleep 1000 & sleep 1000 & sleep 1000".into(),
            ],
            env: Vec::new(),
            cwd: None,
            stdin: false,
            timeout_ms: Some(2_000),
            ..Default::default()
        },
        &[],
    );
    assert!(
        out.status.timed_out,
        "expected a timeout, got {:?}",
        out.status
    );
    // Nothing from that tree may survive: no `sleep` left in the guest.
    let ps = sh(&vm, "ps -o comm | grep -c '^sleep' || true");
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "sleep processes survived the timeout"
    );
    // The sandbox still answers.
    assert_eq!(sh(&vm, "echo alive").stdout, b"alive\n");
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn ten_mib_of_random_bytes_through_stdout() {
    let vm = boot();
    let out = sh(
        &vm,
        "head -c 10485760 /dev/urandom > /tmp/r && sha256sum /tmp/r | cut -d' ' -f1 >&2 && cat /tmp/r",
    );
    assert_eq!(
        out.status.code,
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    let host_sum: String = Sha256::digest(&out.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), host_sum);
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn two_vcpus_and_a_gibibyte() {
    let mut s = spec();
    s.config.vcpus = 2;
    s.config.mem_mib = 1024;
    let vm = boot_spec(&s);
    let out = sh(
        &vm,
        "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("2"), "cpus: {text}");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {text}"));
    assert!(
        kib > 900 * 1024 && kib <= 1024 * 1024,
        "MemTotal {kib} KiB for a 1 GiB guest"
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

/// The guest's local APIC timer runs in TSC-deadline mode: kiln advertises
/// it, so Linux skips calibrating the APIC timer against the PIT, a check
/// that fails on a busy host and leaves the guest on the PIT.
#[test]
fn apic_timer_uses_tsc_deadline_mode() {
    let vm = boot();
    let out = sh(
        &vm,
        "grep -ow tsc_deadline_timer /proc/cpuinfo | head -n1; cat /sys/devices/system/clockevents/clockevent0/current_device",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["tsc_deadline_timer", "lapic-deadline"],
        "stdout: {text}, stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}
