//! Legacy devices seen from tiny guests on /dev/kvm.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use common::*;
use kiln_vmm::vm::exit::ExitReason;

#[test]
fn serial_output_reaches_the_log_file() {
    let dir = temp_dir("serial");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&serial_guest(), true, 0));
    let log = dir.join("serial.log");
    let mut cfg = config(&kernel);
    cfg.serial_log = Some(log.clone());
    let vm = start(&cfg);
    assert_eq!(wait(&vm), ExitReason::Reset);
    assert_eq!(vm.serial_log(), Some(log.as_path()));
    assert!(vm.cmdline().contains("console=ttyS0"));
    drop(vm);
    assert_eq!(std::fs::read(&log).unwrap(), b"hi\n");
}

#[test]
fn unbacked_mmio_and_ports_read_all_ones() {
    let dir = temp_dir("unbacked");
    let kernel = write_file(
        &dir,
        "vmlinux",
        &elf_kernel(&unbacked_read_guest(), true, 0),
    );
    let vm = start(&config(&kernel));
    assert_eq!(
        wait(&vm),
        ExitReason::Reset,
        "guest saw something other than 0xff"
    );
}

#[test]
fn boot_timer_absent_when_disabled() {
    let dir = temp_dir("no-timer");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let mut cfg = config(&kernel);
    cfg.boot_timer = false;
    let vm = start(&cfg);
    assert_eq!(wait(&vm), ExitReason::Reset);
    assert_eq!(vm.timings().userspace_start, None);
}

#[test]
fn reset_without_shutdown_announcement_is_unexpected() {
    // What a panicking guest kernel (panic=-1, reboot=k) looks like.
    let dir = temp_dir("panic-reset");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&UNANNOUNCED_RESET, true, 0));
    let vm = start(&config(&kernel));
    let reason = wait(&vm);
    assert_eq!(reason, ExitReason::UnexpectedReset);
    assert!(!reason.is_clean());
    assert!(reason.to_string().contains("kernel panic"));
}
