//! `kiln doctor` inside the testbed reports hardware-speed KVM and exits 0.

use std::process::Command;

use kiln_e2e::{artifact, require_kvm};

#[test]
fn doctor_reports_hardware_speed_kvm() {
    require_kvm();
    let out = Command::new(artifact("bin/kiln"))
        .arg("doctor")
        .output()
        .expect("run kiln doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kiln doctor failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("hardware speed"),
        "unexpected doctor report: {stdout}"
    );
    assert!(
        stdout.contains("can run directly on this host"),
        "unexpected verdict: {stdout}"
    );
}
