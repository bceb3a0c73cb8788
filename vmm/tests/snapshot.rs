//! Snapshot and restore of tiny guests on this host's /dev/kvm, with the
//! threads under their seccomp filters: the vCPU state a snapshot saves is
//! the state a restore resumes, a clone runs on from it (its serial port
//! too), and a bad snapshot is refused before anything runs.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use kiln_vmm::builder::{self, BuildError};
use kiln_vmm::config::{ControlConfig, VmConfig};
use kiln_vmm::snapshot::{format, SnapshotError, MEMORY_FILE, STATE_FILE};
use kiln_vmm::vm::exit::ExitReason;

/// `mov eax, 0x12345678; jmp $`.
fn marked_spin_guest() -> Vec<u8> {
    let mut c = vec![0xb8, 0x78, 0x56, 0x34, 0x12];
    c.extend(SPIN);
    c
}

/// Sets COM1 up (8N1, scratch register 0x5a), then writes 'k' to it about
/// every few milliseconds forever.
fn serial_ticker_guest() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0x66, 0xba, 0xfb, 0x03, 0xb0, 0x03, 0xee]); // 0: LCR (0x3fb) = 3
    c.extend([0x66, 0xba, 0xff, 0x03, 0xb0, 0x5a, 0xee]); // 7: scratch (0x3ff) = 0x5a
    c.extend([0x66, 0xba, 0xf8, 0x03]); // 14: mov dx, 0x3f8
    c.extend([0xb0, b'k', 0xee]); // 18: mov al, 'k'; out dx, al
    c.extend([0xb9, 0x00, 0x00, 0x10, 0x00]); // 21: mov ecx, 0x100000
    c.extend([0xe2, 0xfe]); // 26: loop $
    c.extend([0xeb, 0xf4]); // 28: jmp 18
    c
}

/// Waits until `path` holds at least one byte; returns its contents.
fn wait_for_output(path: &Path) -> Vec<u8> {
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if !bytes.is_empty() {
            return bytes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in {} within {GUEST_TIMEOUT:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with_control(mut config: VmConfig, dir: &Path, name: &str) -> VmConfig {
    let snapshots = dir.join(format!("{name}-snapshot"));
    std::fs::create_dir_all(&snapshots).unwrap();
    config.control = Some(ControlConfig {
        socket: dir.join(format!("{name}.sock")),
        snapshot_dir: snapshots,
    });
    config
}

/// One request on the control socket; returns the reply line.
fn control(socket: &Path, request: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    reply
}

/// Waits until the spinning guest's vCPU has run its first instructions.
fn let_it_run() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_clone_resumes_where_the_snapshot_was_taken() {
    let dir = temp_dir("snapshot-clone");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&marked_spin_guest(), true, 0));
    let source = with_control(config(&kernel), &dir, "source");
    let snapshot_dir = source.control.as_ref().unwrap().snapshot_dir.clone();
    let vm = start(&source);
    let_it_run();

    // Over the control socket, as kiln does; the source runs on.
    let socket = vm.control_socket().unwrap().to_owned();
    assert_eq!(
        control(&socket, r#"{"op":"ping"}"#).trim(),
        r#"{"ok":true}"#
    );
    let reply = control(&socket, r#"{"op":"snapshot","resume":true}"#);
    assert!(reply.contains(r#""ok":true"#), "{reply}");
    assert!(control(&socket, r#"{"op":"reboot"}"#).contains(r#""ok":false"#));
    assert!(vm.exit_reason().is_none(), "the source still runs");

    let saved = format::read(&snapshot_dir.join(STATE_FILE)).unwrap();
    let spin_at = LOAD_ADDR + 5;
    assert_eq!(saved.vcpus.len(), 1);
    assert_eq!(saved.vcpus[0].regs.rax, 0x1234_5678);
    assert_eq!(saved.vcpus[0].regs.rip, spin_at);
    assert!(!saved.vcpus[0].msrs.is_empty());
    assert_eq!(
        std::fs::metadata(snapshot_dir.join(MEMORY_FILE))
            .unwrap()
            .len(),
        64 << 20
    );
    assert_eq!(vm.shutdown(), ExitReason::Stopped);

    // The clone starts at the spin loop (the `mov` never runs again) and
    // its own snapshot shows the same registers.
    let mut clone = with_control(config(&kernel), &dir, "clone");
    clone.restore = Some(snapshot_dir.clone());
    let clone_snapshots = clone.control.as_ref().unwrap().snapshot_dir.clone();
    let vm = start(&clone);
    let_it_run();
    assert!(vm.exit_reason().is_none(), "the clone runs");
    let report = vm.snapshot(false).unwrap();
    assert!(!report.resumed);
    let again = format::read(&clone_snapshots.join(STATE_FILE)).unwrap();
    assert_eq!(again.vcpus[0].regs.rax, 0x1234_5678);
    assert_eq!(again.vcpus[0].regs.rip, spin_at);
    assert_eq!(again.devices.len(), saved.devices.len());
    assert_eq!(
        wait(&vm),
        ExitReason::Stopped,
        "a snapshot without resume stops"
    );
}

#[test]
fn the_serial_port_keeps_working_after_a_restore() {
    let dir = temp_dir("snapshot-serial");
    let kernel = write_file(
        &dir,
        "vmlinux",
        &elf_kernel(&serial_ticker_guest(), true, 0),
    );
    let mut source = with_control(config(&kernel), &dir, "source");
    source.serial_log = Some(dir.join("source.log"));
    let snapshot_dir = source.control.as_ref().unwrap().snapshot_dir.clone();
    let vm = start(&source);
    wait_for_output(&dir.join("source.log"));
    vm.snapshot(false).unwrap();
    assert_eq!(wait(&vm), ExitReason::Stopped);
    let saved = format::read(&snapshot_dir.join(STATE_FILE)).unwrap();
    let serial = saved.serial.expect("the snapshot holds COM1");
    assert_eq!((serial.line_control, serial.scratch), (0x03, 0x5a));

    // The clone starts in the loop (the register setup never runs again):
    // what its log gets was written after the restore, through the
    // restored port, whose registers are the source's.
    let mut clone = with_control(config(&kernel), &dir, "clone");
    clone.restore = Some(snapshot_dir);
    clone.serial_log = Some(dir.join("clone.log"));
    let clone_snapshots = clone.control.as_ref().unwrap().snapshot_dir.clone();
    let vm = start(&clone);
    let out = wait_for_output(&dir.join("clone.log"));
    assert!(out.iter().all(|&b| b == b'k'), "{out:?}");
    vm.snapshot(false).unwrap();
    assert_eq!(wait(&vm), ExitReason::Stopped);
    let again = format::read(&clone_snapshots.join(STATE_FILE)).unwrap();
    assert_eq!(again.serial.unwrap(), serial);
}

/// Runs the spinning guest, snapshots it into `dir`'s "source-snapshot"
/// and stops it; returns its kernel and the snapshot directory.
fn stopped_spin_snapshot(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kernel = write_file(dir, "vmlinux", &elf_kernel(&marked_spin_guest(), true, 0));
    let source = with_control(config(&kernel), dir, "source");
    let snapshot_dir = source.control.as_ref().unwrap().snapshot_dir.clone();
    let vm = start(&source);
    let_it_run();
    vm.snapshot(false).unwrap();
    wait(&vm);
    (kernel, snapshot_dir)
}

/// Whether this host's KVM can run a guest TSC at another frequency
/// (`KVM_CHECK_EXTENSION(KVM_CAP_TSC_CONTROL)`).
fn host_scales_tsc() -> bool {
    const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;
    const KVM_CAP_TSC_CONTROL: libc::c_ulong = 60;
    let kvm = std::fs::File::open("/dev/kvm").unwrap();
    // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and touches no
    // memory of ours; `kvm` is an open /dev/kvm.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&kvm),
            KVM_CHECK_EXTENSION,
            KVM_CAP_TSC_CONTROL,
        )
    };
    r > 0
}

#[test]
fn a_guest_tsc_of_another_frequency_is_scaled_or_refused() {
    let dir = temp_dir("snapshot-tsc");
    let (kernel, snapshot_dir) = stopped_spin_snapshot(&dir);

    // The same snapshot, as if taken on a host whose TSC runs 1.5x faster.
    let state = snapshot_dir.join(STATE_FILE);
    let mut snapshot = format::read(&state).unwrap();
    let khz = snapshot.vcpus[0]
        .tsc_khz
        .expect("KVM reports the TSC frequency");
    assert!(khz > 0);
    snapshot.vcpus[0].tsc_khz = Some(khz / 2 * 3);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    format::write(&file, &state, &snapshot).unwrap();

    let mut clone = config(&kernel);
    clone.restore = Some(snapshot_dir);
    match builder::start(&clone) {
        Ok(vm) => {
            assert!(host_scales_tsc(), "restored without TSC scaling");
            let_it_run();
            assert!(vm.exit_reason().is_none(), "the clone runs");
            assert_eq!(vm.shutdown(), ExitReason::Stopped);
        }
        Err(err) => {
            assert!(!host_scales_tsc(), "refused although KVM scales: {err}");
            let text = err.to_string();
            assert!(
                text.contains("cannot scale the TSC") && text.contains(&format!("{khz}")),
                "{text}"
            );
        }
    }
}

#[test]
fn bad_snapshots_are_refused_before_anything_runs() {
    let dir = temp_dir("snapshot-bad");
    let (kernel, snapshot_dir) = stopped_spin_snapshot(&dir);

    let restore = |mut c: VmConfig| {
        c.restore = Some(snapshot_dir.clone());
        match builder::start(&c) {
            Ok(_) => panic!("restored from a bad snapshot"),
            Err(e) => e,
        }
    };
    // Another machine shape.
    let mut bigger = config(&kernel);
    bigger.mem_mib = 128;
    assert!(matches!(
        restore(bigger),
        BuildError::Snapshot(SnapshotError::Mismatch(_))
    ));
    let mut more = config(&kernel);
    more.vcpus = 2;
    assert!(matches!(
        restore(more),
        BuildError::Snapshot(SnapshotError::Mismatch(_))
    ));
    let mut with_disk = config(&kernel);
    with_disk.drives.push(kiln_vmm::config::DriveConfig {
        path: write_file(&dir, "disk.img", &[0u8; 4096]),
        read_only: true,
    });
    let err = restore(with_disk);
    assert!(err.to_string().contains("virtio devices"), "{err}");

    // A memory file of the wrong size.
    let mem = snapshot_dir.join(MEMORY_FILE);
    let len = std::fs::metadata(&mem).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    assert!(matches!(
        restore(config(&kernel)),
        BuildError::Snapshot(SnapshotError::MemorySize { .. })
    ));

    // A snapshot of the previous format (version 1): refused by its
    // header, whatever its body.
    let state = snapshot_dir.join(STATE_FILE);
    let bytes = std::fs::read(&state).unwrap();
    let current = format!(r#"{{"format_version":{},"#, format::FORMAT_VERSION);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains(&current), "{text:.200}");
    std::fs::write(
        &state,
        text.replacen(&current, r#"{"format_version":1,"#, 1),
    )
    .unwrap();
    let err = restore(config(&kernel));
    assert!(
        matches!(
            err,
            BuildError::Snapshot(SnapshotError::FormatVersion { found: 1, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("take the snapshot again"), "{err}");
    std::fs::write(&state, &bytes).unwrap();

    // A truncated state file.
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let err = restore(config(&kernel));
    assert!(
        matches!(err, BuildError::Snapshot(SnapshotError::Truncated { .. })),
        "{err}"
    );
}
