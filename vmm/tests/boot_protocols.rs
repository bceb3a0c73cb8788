//! Booting tiny guests through each boot protocol on /dev/kvm.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use common::*;
use kiln_vmm::vm::exit::ExitReason;

#[test]
fn pvh_guest_sees_start_info_and_marks_boot_timer() {
    let dir = temp_dir("pvh");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let vm = start(&config(&kernel));
    assert_eq!(
        wait(&vm),
        ExitReason::Reset,
        "guest checks failed or it did not reset"
    );
    let t = vm.timings();
    let (entry, userspace) = (
        t.kernel_entry.expect("kernel entry"),
        t.userspace_start.expect("boot timer"),
    );
    assert!(t.built.unwrap() <= entry && entry <= userspace, "{t:?}");
    assert!(vm.cmdline().contains("8250.nr_uarts=0"), "{}", vm.cmdline());
    assert!(
        vm.cmdline().contains("virtio_mmio.device=4K@0xd0001000:5"),
        "{}",
        vm.cmdline()
    );
}

#[test]
fn elf_without_pvh_note_boots_in_long_mode() {
    let dir = temp_dir("elf64");
    let kernel = write_file(
        &dir,
        "vmlinux",
        &elf_kernel(&long_mode_check_guest(), false, 0),
    );
    let vm = start(&long_mode_config(&kernel));
    assert_eq!(wait(&vm), ExitReason::Reset);
}

#[test]
fn bzimage_boots_in_long_mode_with_zero_page() {
    let dir = temp_dir("bzimage");
    let kernel = write_file(&dir, "bzImage", &bzimage_kernel(&long_mode_check_guest()));
    let vm = start(&long_mode_config(&kernel));
    assert_eq!(wait(&vm), ExitReason::Reset);
}

#[test]
fn smp_guest_exits_cleanly_with_parked_aps() {
    let dir = temp_dir("smp");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let mut cfg = config(&kernel);
    cfg.vcpus = 4;
    let vm = start(&cfg);
    // The APs wait for INIT/SIPI inside KVM_RUN; stopping them needs kicks.
    assert_eq!(wait(&vm), ExitReason::Reset);
}

/// The boot page tables map only the first GiB, so long-mode test guests
/// cannot reach the boot timer to announce their reset: run them without it
/// (a reset then counts as clean).
fn long_mode_config(kernel: &std::path::Path) -> kiln_vmm::config::VmConfig {
    let mut cfg = config(kernel);
    cfg.boot_timer = false;
    cfg
}
