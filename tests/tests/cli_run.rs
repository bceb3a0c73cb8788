//! `kiln run -- CMD` as a user runs it: output, exit code, timeout, timings.

use std::io::Write;
use std::process::{Command, Stdio};

use kiln_e2e::{artifact, require_kvm};

fn kiln_run(args: &[&str], stdin: &[u8]) -> std::process::Output {
    require_kvm();
    let mut child = Command::new(artifact("bin/kiln"))
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln run");
    let mut input = child.stdin.take().expect("stdin pipe");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kiln run output")
}

#[test]
fn run_streams_output_and_propagates_the_exit_code() {
    let out = kiln_run(
        &[
            "--timings",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr.contains("err\n"), "stderr: {stderr}");
    assert!(
        stderr.contains("spawn -> agent ready"),
        "no timings in: {stderr}"
    );
}

#[test]
fn run_forwards_stdin() {
    let out = kiln_run(&["--", "wc", "-c"], &[b'x'; 12345]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12345");
}

#[test]
fn run_timeout_kills_and_exits_124() {
    let out = kiln_run(&["--timeout", "2", "--", "sh", "-c", "sleep 600"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert!(stderr.contains("timed out"), "stderr: {stderr}");
}

#[test]
fn run_with_missing_kernel_fails_clearly() {
    let out = kiln_run(&["--kernel", "/no/such/vmlinux", "--", "true"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("guest kernel not found"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "expected one line: {stderr}");
}
