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

#[test]
fn sigusr1_dumps_device_state_and_the_vm_serves_on() {
    let vm = boot();
    let log = vm.process().log_path().to_path_buf();
    // An open connection, so the dump reads a live stream's queues too.
    let _open = vm.connect().expect("agent connection");
    // The pid the caller holds is the jail's supervisor; it passes the
    // signal on to the VMM.
    // SAFETY: kill(2) on the VMM this test started.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGUSR1) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("virtio device 0: vsock cid") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.contains("rxq: size 256"),
        "no vsock state dump in the log:\n{text}"
    );
    assert!(text.contains("conn ConnKey"), "{text}");
    assert_eq!(
        sh(&vm, "echo still here").stdout,
        b"still here\n",
        "{}",
        vm.vmm_report()
    );
}
