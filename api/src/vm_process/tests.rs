use std::path::PathBuf;
use std::time::Duration;

use kiln_vmm::config::VmConfig;

use super::{SpawnOptions, VmProcess, VmProcessError, VmSpec};

/// A stand-in "VMM" that exits at once (sh refuses kiln-vmm's flags).
fn spec_running(vmm: &str) -> VmSpec {
    VmSpec {
        vmm: PathBuf::from(vmm),
        config: VmConfig::new("/nonexistent/vmlinux"),
    }
}

#[tokio::test]
async fn a_vmm_that_ends_early_is_reported_with_its_status() {
    let vm = VmProcess::spawn(&spec_running("/bin/sh"), &SpawnOptions::default()).expect("spawn");
    let config = std::fs::read_to_string(vm.run_dir().join("config.json")).expect("config");
    let config: VmConfig = serde_json::from_str(&config).expect("a VmConfig");
    assert_eq!(
        config.vsock.expect("vsock").uds_path,
        vm.run_dir().join("vsock.sock")
    );
    let err = vm
        .wait_ready(Duration::from_secs(10))
        .await
        .expect_err("sh is no VMM");
    assert!(
        matches!(&err, VmProcessError::EarlyExit { ended, .. } if ended.to_string() == "exited with status 2"),
        "{err}"
    );
    assert!(!err.guest_crashed(), "a setup failure is no guest crash");
    assert!(vm
        .vmm_report()
        .starts_with("kiln-vmm exited with status 2; its last log line: "));
    let exit = vm.wait_or_kill(Duration::from_secs(5)).await.expect("wait");
    assert_eq!(exit.status.and_then(|s| s.code()), Some(2));
}

#[tokio::test]
async fn kill_ends_the_process_and_drop_removes_the_run_dir() {
    let mut cmd = tokio::process::Command::new("sleep");
    cmd.arg("1000");
    let dir = super::create_run_dir(None).expect("run dir");
    let vm = VmProcess::spawn_command(
        cmd,
        super::AgentAddr::Unix(dir.join("x")),
        dir.clone(),
        true,
    )
    .expect("spawn");
    assert!(vm.identity().is_alive());
    assert!(vm.ended().is_none());
    let exit = vm
        .wait_or_kill(Duration::from_millis(50))
        .await
        .expect("killed");
    assert!(exit.status.is_none(), "killed, not exited");
    assert!(!vm.identity().is_alive());
    drop(vm);
    assert!(!dir.exists());
}

#[tokio::test]
async fn adoption_needs_the_same_start_time_and_sees_the_exit() {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    let identity = super::ProcessIdentity::of(child.id()).expect("identity");
    let dir = super::create_run_dir(None).expect("run dir");
    let recycled = super::ProcessIdentity {
        start_ticks: identity.start_ticks + 7,
        ..identity
    };
    let err = VmProcess::adopt(recycled, super::AgentAddr::Unix(dir.join("x")), dir.clone())
        .expect_err("another start time is another process");
    assert!(matches!(err, VmProcessError::Process(_)), "{err}");
    let vm = VmProcess::adopt(identity, super::AgentAddr::Unix(dir.join("x")), dir.clone())
        .expect("adopt");
    vm.kill().expect("kill");
    // The pidfd reports the exit even though the process is not reaped by
    // this handle (std's Child below still owns the zombie).
    let end = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .expect("exit seen");
    assert_eq!(end.status, None);
    let mut child = child;
    let _ = child.wait();
}
