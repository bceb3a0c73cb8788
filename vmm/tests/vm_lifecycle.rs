//! Exit reasons and stopping VMs, with tiny guests on /dev/kvm.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_vmm::vm::exit::ExitReason;

#[test]
fn triple_fault_is_reported_and_not_clean() {
    let dir = temp_dir("crash");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&CRASH, true, 0));
    let vm = start(&config(&kernel));
    let reason = wait(&vm);
    assert_eq!(reason, ExitReason::TripleFault { vcpu: 0 });
    assert!(!reason.is_clean());
}

#[test]
fn shutdown_stops_a_spinning_guest() {
    let dir = temp_dir("spin");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let mut cfg = config(&kernel);
    cfg.vcpus = 2;
    let vm = start(&cfg);
    assert_eq!(
        vm.wait_timeout(Duration::from_millis(200)),
        None,
        "spinning guest exited"
    );
    let t0 = Instant::now();
    assert_eq!(vm.shutdown(), ExitReason::Stopped);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // Idempotent, and wait() after shutdown returns at once.
    assert_eq!(vm.shutdown(), ExitReason::Stopped);
    assert_eq!(vm.wait(), ExitReason::Stopped);
}

#[test]
fn stop_handle_wakes_a_waiter() {
    let dir = temp_dir("stop-handle");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let vm = start(&config(&kernel));
    let handle = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.stop();
    });
    assert_eq!(wait(&vm), ExitReason::Stopped);
    stopper.join().unwrap();
}

#[test]
fn vsock_socket_is_created_and_removed() {
    let dir = temp_dir("vsock");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let uds = dir.join("v.sock");
    let mut cfg = config(&kernel);
    cfg.vsock = Some(kiln_vmm::config::VsockConfig {
        uds_path: uds.clone(),
        guest_cid: 3,
    });
    let vm = start(&cfg);
    assert!(uds.exists());
    assert!(vm.cmdline().contains("virtio_mmio.device=4K@0xd0001000:5"));
    assert!(vm.cmdline().contains("virtio_mmio.device=4K@0xd0002000:6"));
    // A second VM on the same socket is refused and leaves it alone.
    match kiln_vmm::builder::start(&cfg) {
        Err(kiln_vmm::builder::BuildError::SocketInUse(p)) => assert_eq!(p, uds),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second vm started on a live socket"),
    }
    assert!(uds.exists());
    // No guest driver: the handshake fails rather than hanging forever.
    assert!(vm.vsock_connect(1024).is_err());
    assert_eq!(vm.shutdown(), ExitReason::Stopped);
    assert!(!uds.exists(), "socket file left behind");
}
