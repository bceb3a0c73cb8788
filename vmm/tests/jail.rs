//! The `kiln-vmm` binary jails itself: seen from outside, its VMM process
//! runs under seccomp in every thread, with no_new_privs, no capabilities,
//! the jail uid when started as root, its own namespaces and a root holding
//! only the VM's files; a forbidden syscall kills it with a report. Tiny
//! guests, so these run wherever /dev/kvm exists.

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_vmm::config::DEFAULT_JAIL_ID;
use kiln_vmm::jail::inspect;

/// `mov byte [0xd0000000], 123` (userspace started), then `jmp $`.
const MARK_AND_SPIN: [u8; 9] = [0xc6, 0x05, 0x00, 0x00, 0x00, 0xd0, 123, 0xeb, 0xfe];

fn spawn(kernel: &Path, uds: &Path, extra: &[&str]) -> Child {
    assert!(Path::new("/dev/kvm").exists(), "needs /dev/kvm");
    Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--mem-mib", "64", "--kernel"])
        .arg(kernel)
        .arg("--vsock-uds")
        .arg(uds)
        .args(extra)
        .env("KILN_LOG", "error")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn the_jailed_vmm_seen_from_outside() {
    let dir = temp_dir("jail-outside");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let uds = dir.join("v.sock");
    let supervisor = spawn(&kernel, &uds, &[]);
    wait_for("the vsock socket", || uds.exists());
    let sup_pid = supervisor.id() as i32;
    let vmm = inspect::children(sup_pid);
    assert_eq!(vmm.len(), 1, "one VMM under the supervisor: {vmm:?}");
    // The socket is bound while the VM is built, before its threads start.
    let all_threads = |v: &inspect::ProcessView| {
        let names: Vec<&str> = v.thread_seccomp.iter().map(|(n, _)| n.as_str()).collect();
        ["kiln-vmm", "kiln-virtio", "kiln-vcpu0", "kiln-signals"]
            .iter()
            .all(|t| names.contains(t))
    };
    // The main thread installs its own filter after starting the others:
    // wait (bounded) until every thread is there and filtered.
    wait_for("every VMM thread, filtered", || {
        inspect::view(vmm[0])
            .is_ok_and(|v| all_threads(&v) && v.thread_seccomp.iter().all(|(_, m)| *m == 2))
    });
    let vmm = inspect::view(vmm[0]).unwrap();
    let expected_uid = if is_root() {
        DEFAULT_JAIL_ID
    } else {
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    };
    assert_eq!(vmm.jail_gaps(expected_uid), Vec::<String>::new());

    let sup = inspect::view(sup_pid).unwrap();
    assert_eq!(sup.thread_seccomp, vec![("kiln-vmm".to_string(), 2)]);
    assert_eq!(sup.no_new_privs, 1);
    let kill_only = 1u64 << 5; // CAP_KILL
    assert_eq!(
        (sup.cap_eff, sup.cap_bnd),
        (kill_only, kill_only),
        "the supervisor keeps only CAP_KILL"
    );

    // Its root: /dev/kvm, the kernel, and the socket's directory (which
    // holds the kernel too, here).
    let canon = std::fs::canonicalize(&*dir).unwrap();
    let files = inspect::root_files(vmm.pid).unwrap();
    let mut expected: Vec<PathBuf> = vec![
        "/dev/kvm".into(),
        canon.join("v.sock"),
        canon.join("vmlinux"),
    ];
    expected.sort();
    assert_eq!(files, expected);

    // SIGTERM to the pid the caller knows stops the VM cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sup_pid, libc::SIGTERM) };
    let out = supervisor.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!uds.exists(), "socket file left behind");
}

#[test]
fn killing_the_callers_pid_ends_the_vmm() {
    let dir = temp_dir("jail-kill");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let uds = dir.join("v.sock");
    let mut supervisor = spawn(&kernel, &uds, &[]);
    wait_for("the vsock socket", || uds.exists());
    let vmm = inspect::children(supervisor.id() as i32);
    assert_eq!(vmm.len(), 1);
    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    wait_for("the VMM's death", || {
        !Path::new(&format!("/proc/{}", vmm[0])).exists()
    });
}

#[test]
fn a_forbidden_syscall_kills_the_vmm_with_a_report() {
    let dir = temp_dir("jail-violation");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&MARK_AND_SPIN, true, 0));
    let uds = dir.join("v.sock");
    let child = spawn(&kernel, &uds, &["--test-seccomp-violation"]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!(
            "kiln-vmm: seccomp violation: syscall {} in the vcpu thread",
            libc::SYS_socket
        )),
        "{stderr}"
    );
    assert!(!uds.exists(), "socket file left behind");
}

#[test]
fn no_jail_runs_one_plain_process() {
    let dir = temp_dir("jail-off");
    let kernel = write_file(&dir, "vmlinux", &elf_kernel(&SPIN, true, 0));
    let uds = dir.join("v.sock");
    let mut vmm = spawn(&kernel, &uds, &["--no-jail"]);
    wait_for("the vsock socket", || uds.exists());
    assert!(inspect::children(vmm.id() as i32).is_empty());
    let view = inspect::view(vmm.id() as i32).unwrap();
    assert!(view.thread_seccomp.iter().all(|(_, mode)| *mode == 0));
    assert_eq!(view.shared_namespaces, inspect::NAMESPACES.to_vec());
    vmm.kill().unwrap();
    vmm.wait().unwrap();
}
