//! Repeated boots leak nothing: no fds, no VMM processes, no run directories.

use std::path::Path;
use std::time::Duration;

use kiln_e2e::vm::{boot, sh};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn run_dirs() -> Vec<String> {
    let prefix = format!("kiln-vm-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn twenty_boots_in_a_row_leak_nothing() {
    // Warm up once so lazily opened fds (stdio locks, etc.) are counted.
    let vm = boot();
    vm.shutdown(Duration::from_secs(30)).expect("shutdown");
    let fds_before = open_fds();

    let mut pids = Vec::new();
    for i in 0..20 {
        let vm = boot();
        let pid = vm.pid();
        pids.push(pid);
        let out = sh(&vm, &format!("echo boot{i}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("boot{i}\n"));
        let exit = vm.shutdown(Duration::from_secs(30)).expect("shutdown");
        assert!(
            exit.status.is_some_and(|s| s.success()),
            "boot {i}: VMM exit {exit:?}"
        );
    }
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "VMM pid {pid} still exists"
        );
    }
    assert_eq!(run_dirs(), Vec::<String>::new(), "run directories leaked");
}
