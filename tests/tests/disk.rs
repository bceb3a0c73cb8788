//! Per-sandbox writable disks (issue 13): a sandbox whose writable layer is
//! a sparse host-backed ext4 disk holds more than its memory, fills up with
//! clean ENOSPC errors, and clones of a snapshot each get their own copy of
//! the disk as it was at the snapshot.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use kiln::vm_process::disk::DISK_NAME;
use kiln::vm_process::{AgentError, SpawnOptions, VmProcessError};
use kiln_agent::protocol::ErrorCode;
use kiln_e2e::daemon::scratch;
use kiln_e2e::vm::{boot_spec_with, ok, python_node_spec, sh, TestVm, BOOT_TIMEOUT};

const SHUTDOWN: Duration = Duration::from_secs(30);

fn with_disk(mib: u32) -> SpawnOptions {
    SpawnOptions {
        writable_disk_mib: Some(mib),
        ..SpawnOptions::default()
    }
}

fn text(out: &kiln_e2e::vm::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `/tmp`'s file system as the sandbox sees it: the overlay, whose size is
/// its writable layer's.
const TMP_STATFS: &str = "stat -f -c '%T %b %S' /tmp";

/// Checks [`TMP_STATFS`]'s output: the overlay, as big as a `disk_mib`
/// MiB ext4 (less its metadata), so neither the 1 GiB tmpfs default nor
/// guest memory.
fn assert_tmp_is_the_disk(statfs: &str, disk_mib: u64) {
    let mut words = statfs.split_whitespace();
    assert_eq!(words.next(), Some("overlayfs"), "/tmp: {statfs}");
    let mut n = || -> u64 { words.next().and_then(|w| w.parse().ok()).expect("number") };
    let mib = (n() * n()) >> 20;
    assert!(
        mib <= disk_mib && mib > disk_mib * 9 / 10,
        "/tmp holds {mib} MiB, not a {disk_mib} MiB disk: {statfs}"
    );
}

/// Host bytes the disk file takes, and its apparent size.
fn host_usage(disk: &Path) -> (u64, u64) {
    let m = std::fs::metadata(disk).expect("stat the disk");
    (m.blocks() * 512, m.len())
}

#[test]
fn a_disk_holds_more_than_memory_and_fills_with_clean_errors() {
    let mut spec = python_node_spec();
    spec.config.mem_mib = 256;
    let vm = boot_spec_with(&spec, &with_disk(512));
    let disk = vm.process().run_dir().join(DISK_NAME);
    let (used, size) = host_usage(&disk);
    assert_eq!(size, 512 << 20);
    assert!(
        used < 64 << 20,
        "a fresh disk takes {used} bytes on the host"
    );

    assert_tmp_is_the_disk(&ok(&sh(&vm, TMP_STATFS)), 512);

    // More than the guest's whole memory, written and read back.
    let big = sh(
        &vm,
        "head -c 320000000 /dev/zero > /home/sandbox/big && sync && wc -c < /home/sandbox/big",
    );
    assert_eq!(ok(&big).trim(), "320000000", "{}", text(&big));
    let (used, _) = host_usage(&disk);
    assert!(
        used > 300 << 20,
        "the data is on the host disk: {used} bytes"
    );

    // Filling it: the program gets ENOSPC, an upload a NoSpace error and
    // no partial file.
    let fill = sh(&vm, "head -c 400000000 /dev/zero > /tmp/fill; echo rc=$?");
    let t = text(&fill);
    assert!(
        t.contains("No space left on device") && !t.contains("rc=0"),
        "{t}"
    );
    let err = vm
        .upload(
            "upload.bin",
            None,
            std::io::Cursor::new(vec![7u8; 64 << 20]),
        )
        .expect_err("no room left for 64 MiB");
    let code = match &err {
        VmProcessError::Agent(e @ AgentError::Files { .. }) => e.agent_code(),
        _ => None,
    };
    assert_eq!(code, Some(ErrorCode::NoSpace), "{err}");
    assert_eq!(
        ok(&sh(&vm, "ls /home/sandbox")).trim(),
        "big",
        "a partial upload was left behind"
    );
    // Space again: the sandbox carries on.
    ok(&sh(&vm, "rm -f /tmp/fill /home/sandbox/big"));
    vm.upload("small.txt", None, &b"ok"[..])
        .expect("small upload after a full disk");
    assert_eq!(ok(&sh(&vm, "cat /home/sandbox/small.txt")), "ok");

    let run_dir = vm.process().run_dir().to_path_buf();
    vm.shutdown(SHUTDOWN).expect("shutdown");
    assert!(!run_dir.exists(), "the disk went with the VM");
}

#[test]
fn clones_get_their_own_copy_of_the_disk_at_the_snapshot() {
    let spec = python_node_spec();
    let dir = scratch("disk-clones").join("snapshot");
    std::fs::create_dir_all(&dir).expect("snapshot dir");
    let options = SpawnOptions {
        snapshot_dir: Some(dir.clone()),
        ..with_disk(256)
    };
    let source = boot_spec_with(&spec, &options);
    ok(&sh(&source, "echo from-source > /home/sandbox/marker"));

    let err = source
        .snapshot(true)
        .expect_err("a VM with a disk cannot run on after a snapshot");
    assert!(err.to_string().contains("writable disk"), "{err}");
    assert_eq!(
        ok(&sh(&source, "cat /home/sandbox/marker")),
        "from-source\n"
    );

    source.snapshot(false).expect("snapshot, then stop");
    let (used, size) = host_usage(&dir.join(DISK_NAME));
    assert_eq!(size, 256 << 20);
    assert!(used < 64 << 20, "the snapshot's disk stays sparse: {used}");

    let clone = |name: &str| {
        let vm = TestVm::restore_with(&spec, &dir, &with_disk(256)).expect("restore");
        vm.wait_ready(BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("clone {name}: {e}; {}", vm.vmm_report()));
        vm
    };
    let (a, b) = (clone("a"), clone("b"));
    for (name, vm) in [("a", &a), ("b", &b)] {
        assert_eq!(ok(&sh(vm, "cat /home/sandbox/marker")), "from-source\n");
        ok(&sh(
            vm,
            &format!("echo {name} > /home/sandbox/only-{name} && sync"),
        ));
    }
    assert_eq!(ok(&sh(&a, "ls /home/sandbox")), "marker\nonly-a\n");
    assert_eq!(ok(&sh(&b, "ls /home/sandbox")), "marker\nonly-b\n");
    // After a page-cache drop the files come from each clone's own disk.
    for (name, vm) in [("a", &a), ("b", &b)] {
        let out = sh(
            vm,
            &format!("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; cat /home/sandbox/only-{name} /home/sandbox/marker"),
        );
        assert_eq!(ok(&out), format!("{name}\nfrom-source\n"));
    }
    a.shutdown(SHUTDOWN).expect("shutdown a");
    b.shutdown(SHUTDOWN).expect("shutdown b");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

/// A daemon template with a disk: its snapshot carries the disk, and each
/// sandbox (a restored clone) writes to its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_template_with_a_disk_restores_clones_with_their_own_disks() {
    use kiln::model::SandboxSpec;
    use kiln_e2e::daemon::Daemon;

    let dir = scratch("disk-daemon");
    let config = r#"
default_template = "scratch"
[templates.scratch]
base = "python-node"
mem_mib = 384
disk_mib = 256
pool_target = 1
"#;
    let mut daemon = Daemon::start(&dir, config);
    let kiln = kiln::Kiln::connect_unix(&daemon.socket)
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let snapshot_ready = |d: &Daemon| {
        std::fs::read_dir(d.state_dir.join("snapshots/scratch"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("complete").exists() && e.path().join(DISK_NAME).exists())
    };
    while !snapshot_ready(&daemon) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no template snapshot with a disk: {}",
            daemon.get("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut sandboxes = Vec::new();
    for _ in 0..2 {
        sandboxes.push(
            kiln.sandboxes()
                .create(SandboxSpec::default())
                .await
                .expect("create"),
        );
    }
    for (i, s) in sandboxes.iter().enumerate() {
        let script = format!("{TMP_STATFS}; echo {i} > /home/sandbox/mine; sync; ls /home/sandbox");
        let out = s
            .exec(["sh", "-c", script.as_str()])
            .output()
            .await
            .expect("exec");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_tmp_is_the_disk(text.lines().next().unwrap_or_default(), 256);
        assert_eq!(text.lines().skip(1).collect::<Vec<_>>(), ["mine"], "{text}");
    }
    for (i, s) in sandboxes.iter().enumerate() {
        let out = s
            .exec(["cat", "/home/sandbox/mine"])
            .output()
            .await
            .expect("exec");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    assert!(
        daemon.vm_starts("scratch", "restore") >= 1,
        "{}",
        daemon.get("/metrics")
    );
    for s in sandboxes {
        s.delete().await.expect("delete");
    }
    assert!(daemon.stop(), "drain and exit 0");
    assert!(daemon.vmm_pids().is_empty(), "VMs left after the drain");
    let _ = std::fs::remove_dir_all(dir);
}
