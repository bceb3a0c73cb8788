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

#[test]
fn run_lang_python_code_string() {
    let out = kiln_run(
        &[
            "--lang",
            "python",
            "-c",
            "import sys; print(sum(range(5)), sys.argv[1:])",
            "a b",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10 ['a b']\n");
}

#[test]
fn run_lang_node_program_from_stdin_and_bash_exit_code() {
    let out = kiln_run(
        &["--lang", "node", "-"],
        b"console.log([1,2,3].join('-'))\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1-2-3\n");

    let out = kiln_run(&["--lang", "bash", "-c", "echo $((6*7)); exit 3"], b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

#[test]
fn run_program_file_with_copy_in_and_copy_out() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let program = dir.join("prog.py");
    let input = dir.join("input.bin");
    let output = dir.join("out.txt");
    std::fs::write(
        &program,
        "import hashlib\ndata = open('in/input.bin', 'rb').read()\nopen('result.txt', 'w').write(hashlib.sha256(data).hexdigest())\nprint(len(data))\n",
    )
    .expect("write program");
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &payload).expect("write input");
    let copy_in = format!("{}:in/input.bin", input.display());
    let copy_out = format!("result.txt:{}", output.display());
    let out = kiln_run(
        &[
            "--lang",
            "python",
            "--copy-in",
            &copy_in,
            "--copy-out",
            &copy_out,
            program.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "300000\n");
    use sha2::{Digest, Sha256};
    let want: String = Sha256::digest(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(std::fs::read_to_string(&output).expect("copied out"), want);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_guest_that_crashes_while_booting_is_booted_once_more_then_reported() {
    // An initramfs without /init: the guest kernel panics at every boot.
    let dir = std::env::temp_dir().join(format!("kiln-cli-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(
        &initramfs,
        kiln_e2e::cpio::newc(&[kiln_e2e::cpio::Entry {
            path: "etc/hostname",
            mode: 0o100644,
            data: b"x\n",
        }]),
    )
    .expect("write initramfs");
    let out = kiln_run(
        &[
            "--template",
            "minimal",
            "--initramfs",
            initramfs.to_str().expect("utf-8 path"),
            "--",
            "true",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.matches("booting once more").count(),
        1,
        "one more boot, not more: {stderr}"
    );
    assert!(
        stderr.contains("kernel panic"),
        "the last boot's reason: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
