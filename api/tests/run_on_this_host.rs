//! `kiln run` on the host running the tests: on a host whose /dev/kvm
//! emulates guest kernel mode (or has none) it must refuse at once with the
//! reason; on a hardware-KVM host it must get past that check.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn kiln_run_refuses_unusable_kvm_with_the_reason() {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--kernel", "/no/such/vmlinux", "--", "true"])
        .output()
        .expect("run kiln");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected a one-line error: {stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let hardware = kiln::kvm_check::ensure_hardware_kvm();
    match hardware {
        // Past the KVM check, the missing kernel is what stops it.
        Ok(()) => assert!(
            stderr.contains("guest kernel not found"),
            "stderr: {stderr}"
        ),
        Err(kiln::kvm_check::KvmCheckError::Emulated(_)) => {
            assert!(
                stderr.contains("emulates guest kernel mode"),
                "stderr: {stderr}"
            );
            assert!(stderr.contains("testbed"), "stderr: {stderr}");
        }
        Err(other) => assert!(
            stderr.contains(&other.to_string()[..20]),
            "stderr: {stderr}"
        ),
    }
}
