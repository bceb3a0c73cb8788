//! The `kiln-vmm` binary: exit codes, one-line errors, timings, signals and
//! socket files. Guest-running cases need /dev/kvm.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn kiln_vmm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"));
    cmd.arg("--mem-mib").arg("64");
    // Errors only: warnings name the jail pieces a host lacks (cgroup v2,
    // say), which these tests of error lines do not care about.
    cmd.env("KILN_LOG", "error");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test runs a guest and needs /dev/kvm"
    );
    cmd.output().expect("run kiln-vmm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn clean_guest_exit_is_status_zero_with_timings() {
    let dir = temp_dir("cli-clean");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let timings = dir.join("t.json");
    let out = run(kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--timings-json")
        .arg(&timings));
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        stderr(&out)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&timings).unwrap()).unwrap();
    assert_eq!(json["clean"], true);
    assert_eq!(json["exit"], "guest reset");
    assert!(json["kernel_entry_us"].as_u64().is_some(), "{json}");
    assert!(
        json["userspace_start_us"].as_u64().unwrap() >= json["kernel_entry_us"].as_u64().unwrap()
    );
}

#[test]
fn crashing_guest_is_status_one_with_one_line() {
    let dir = temp_dir("cli-crash");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&CRASH, true, 0));
    let out = run(kiln_vmm().arg("--kernel").arg(&kernel));
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    // One line: the reason, then the crashed vCPU's state.
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "kiln-vmm: vm exited: vcpu 0 triple fault (guest crashed); vcpu state: rip 0x"
        ),
        "{err}"
    );
    assert!(
        err.contains(" cr3 ") && err.contains("exception injected"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn startup_errors_are_status_two_with_one_line() {
    let dir = temp_dir("cli-errors");
    let out = kiln_vmm()
        .arg("--kernel")
        .arg(dir.join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("kiln-vmm: ") && err.contains("missing") && err.lines().count() == 1,
        "{err}"
    );

    let out = kiln_vmm().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--kernel"), "{}", stderr(&out));

    let out = kiln_vmm()
        .arg("--kernel")
        .arg("/x")
        .arg("--vcpus")
        .arg("0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("vcpus"), "{}", stderr(&out));
}

#[test]
fn drive_errors_are_one_line_and_good_drives_attach() {
    let dir = temp_dir("cli-drives");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let tiny = write_file(&dir, "tiny.img", &[0u8; 100]);
    let disk = write_file(&dir, "disk.img", &[0u8; 4096]);
    for (flag, path, want) in [
        ("--drive", dir.join("missing.img"), "cannot open drive"),
        (
            "--drive-rw",
            tiny.clone(),
            "smaller than one 512-byte sector",
        ),
        ("--drive", dir.to_path_buf(), "not a regular file"),
    ] {
        let out = run(kiln_vmm().arg("--kernel").arg(&kernel).arg(flag).arg(&path));
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.starts_with("kiln-vmm: ") && err.contains(want) && err.lines().count() == 1,
            "{err}"
        );
    }
    // The same file read-write twice: the second open finds it locked.
    let out = run(kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--drive-rw")
        .arg(&disk)
        .arg("--drive-rw")
        .arg(&disk));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    // Valid drives (read-only twice, one read-write) attach and the guest runs.
    let other = write_file(&dir, "other.img", &[0u8; 1024]);
    let out = run(kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--drive")
        .arg(&disk)
        .arg("--drive")
        .arg(&disk)
        .arg("--drive-rw")
        .arg(&other));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

#[test]
fn config_file_with_flag_overrides() {
    let dir = temp_dir("cli-config");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&serial_guest(), true, 0));
    let log = dir.join("serial.log");
    let cfg = serde_json::json!({ "kernel": "/does/not/exist", "mem_mib": 64, "serial_log": log });
    let cfg_path = write_file(&dir, "vm.json", cfg.to_string().as_bytes());
    let out = run(Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("--kernel")
        .arg(&kernel));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(std::fs::read(&log).unwrap(), b"hi\n");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let dir = temp_dir("cli-sigterm");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let uds = dir.join("v.sock");
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test runs a guest and needs /dev/kvm"
    );
    let mut child = kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vsock-uds")
        .arg(&uds)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !uds.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("kiln-vmm exited early: {:?} {}", out.status, stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second instance refuses the live socket and leaves it in place.
    let out = kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vsock-uds")
        .arg(&uds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    assert!(uds.exists());

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        stderr(&out)
    );
    assert!(!uds.exists(), "socket file left behind");
}

#[test]
fn refuses_a_path_that_is_not_a_socket() {
    let dir = temp_dir("cli-notsock");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let path = write_file(&dir, "important.txt", b"keep me");
    let out = run(kiln_vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vsock-uds")
        .arg(&path));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn restore_errors_are_status_two_with_one_line() {
    let dir = temp_dir("cli-restore");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    write_file(
        &dir,
        "vm.state",
        b"KILN-VM-SNAPSHOT\n{\"format_version\":99}\n",
    );
    write_file(&dir, "vm.mem", &[]);
    for (snapshot, want) in [
        (dir.join("missing"), "vm.state"),
        (dir.to_path_buf(), "snapshot state file is corrupt"),
    ] {
        let out = run(kiln_vmm()
            .arg("--kernel")
            .arg(&kernel)
            .arg("--no-jail")
            .arg("--restore")
            .arg(&snapshot));
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.starts_with("kiln-vmm: restore: ")
                && err.contains(want)
                && err.lines().count() == 1,
            "{err}"
        );
    }
}
