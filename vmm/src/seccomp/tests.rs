#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

use super::*;
use crate::hypervisor::kvm::seccomp::vcpu_run_ioctls;

fn runtime() -> Runtime {
    Runtime {
        pid: 1,
        kick_signal: 34,
        child: Some(4242),
    }
}

/// Whether `kind` may call `syscall` with `args`.
fn admits(kind: ThreadKind, syscall: i64, args: [u64; 6]) -> bool {
    let list = allowed(kind, &runtime());
    let entries: Vec<_> = list.iter().filter(|a| a.syscall == syscall).collect();
    entries.iter().any(|a| a.admits(&args))
}

#[test]
fn this_kernel_has_seccomp() {
    // The fork-based tests below would fail without it anyway; say why.
    assert!(kernel_supports_seccomp());
}

#[test]
fn every_filter_compiles_and_fits_in_bpf() {
    let filters = ThreadFilters::compile(&runtime()).unwrap();
    for kind in ThreadKind::ALL {
        let len = filters.len(kind);
        assert!(len > 10 && len < 4096, "{kind:?}: {len} instructions");
    }
}

#[test]
fn every_entry_says_why() {
    for kind in ThreadKind::ALL {
        for entry in allowed(kind, &runtime()) {
            assert!(entry.why.len() > 5, "{kind:?}: syscall {}", entry.syscall);
        }
    }
}

#[test]
fn no_thread_may_escape_or_spawn() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_ptrace,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_setuid,
        libc::SYS_setresuid,
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_init_module,
        libc::SYS_kexec_load,
        libc::SYS_keyctl,
        libc::SYS_io_uring_setup,
        libc::SYS_userfaultfd,
        libc::SYS_seccomp,
        libc::SYS_prctl,
    ];
    for kind in ThreadKind::ALL {
        for nr in forbidden {
            assert!(!admits(kind, nr, [0; 6]), "{kind:?} may call {nr}");
        }
    }
}

#[test]
fn argument_rules() {
    let exec = libc::PROT_READ as u64 | libc::PROT_EXEC as u64;
    let private = libc::MAP_PRIVATE as u64 | libc::MAP_ANONYMOUS as u64;
    for kind in ThreadKind::ALL {
        assert!(admits(kind, libc::SYS_mmap, [0, 4096, 3, private, 0, 0]));
        assert!(!admits(
            kind,
            libc::SYS_mmap,
            [0, 4096, exec, private, 0, 0]
        ));
        let shared = libc::MAP_SHARED as u64;
        assert!(!admits(kind, libc::SYS_mmap, [0, 4096, 3, shared, 0, 0]));
        assert!(!admits(kind, libc::SYS_mprotect, [0, 4096, exec, 0, 0, 0]));
    }
    // vCPU ioctls: KVM's run-loop requests only, whatever the upper bits.
    for (request, _) in vcpu_run_ioctls() {
        assert!(admits(
            ThreadKind::Vcpu,
            libc::SYS_ioctl,
            [9, request, 0, 0, 0, 0]
        ));
    }
    assert!(!admits(
        ThreadKind::Vcpu,
        libc::SYS_ioctl,
        [9, libc::TCGETS, 0, 0, 0, 0]
    ));
    // KVM_SET_USER_MEMORY_REGION is a setup-time ioctl.
    assert!(!admits(
        ThreadKind::Vcpu,
        libc::SYS_ioctl,
        [9, 0x4020_ae46, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Main,
        libc::SYS_ioctl,
        [9, 0xae80, 0, 0, 0, 0]
    ));
    assert!(admits(
        ThreadKind::Virtio,
        libc::SYS_ioctl,
        [9, libc::FIONBIO, 0, 0, 0, 0]
    ));
    // The SIGUSR1 state dump asks each vsock stream what it has queued.
    for request in [libc::FIONREAD, libc::TIOCOUTQ] {
        assert!(admits(
            ThreadKind::Virtio,
            libc::SYS_ioctl,
            [9, request, 0, 0, 0, 0]
        ));
    }
    assert!(!admits(
        ThreadKind::Virtio,
        libc::SYS_ioctl,
        [9, libc::TIOCSTI, 0, 0, 0, 0]
    ));
    // Sockets: unix streams on the event loop only.
    let unix = libc::AF_UNIX as u64;
    let stream = libc::SOCK_STREAM as u64 | libc::SOCK_NONBLOCK as u64 | libc::SOCK_CLOEXEC as u64;
    assert!(admits(
        ThreadKind::Virtio,
        libc::SYS_socket,
        [unix, stream, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Virtio,
        libc::SYS_socket,
        [libc::AF_INET as u64, stream, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Virtio,
        libc::SYS_socket,
        [unix, libc::SOCK_DGRAM as u64, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Vcpu,
        libc::SYS_socket,
        [unix, stream, 0, 0, 0, 0]
    ));
    // Signals: main kicks only its own threads with the kick signal; the
    // supervisor kills only its child or itself.
    assert!(admits(
        ThreadKind::Main,
        libc::SYS_tgkill,
        [1, 7, 34, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Main,
        libc::SYS_tgkill,
        [1, 7, 9, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Main,
        libc::SYS_tgkill,
        [2, 7, 34, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Main,
        libc::SYS_kill,
        [1, 9, 0, 0, 0, 0]
    ));
    assert!(admits(
        ThreadKind::Supervisor,
        libc::SYS_kill,
        [4242, 15, 0, 0, 0, 0]
    ));
    assert!(admits(
        ThreadKind::Supervisor,
        libc::SYS_kill,
        [1, 31, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Supervisor,
        libc::SYS_kill,
        [4243, 9, 0, 0, 0, 0]
    ));
    assert!(!admits(
        ThreadKind::Supervisor,
        libc::SYS_kill,
        [u64::MAX, 9, 0, 0, 0, 0]
    ));
}

/// Forks; the child installs `kind`'s filter, makes `call`, and exits 0 if
/// it survives. Returns the child's wait status and what it wrote to stderr.
fn in_filtered_child(kind: ThreadKind, call: fn()) -> (libc::c_int, String) {
    let filters = ThreadFilters::compile(&Runtime {
        pid: u64::from(std::process::id()),
        kick_signal: 34,
        child: None,
    })
    .unwrap();
    report::install_handler().unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes async-signal-safe calls (dup2, prctl,
    // seccomp, the tested syscall, _exit); the filter was compiled before.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain descriptor calls in the forked child.
        unsafe {
            libc::dup2(fds[1], libc::STDERR_FILENO);
            libc::close(fds[0]);
        }
        if filters.install(kind).is_err() {
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(3) };
        }
        call();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing the parent's copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading into `buf`, which outlives the call.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(fds[0]) };
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn a_forbidden_syscall_kills_the_process_with_a_report() {
    let (status, stderr) = in_filtered_child(ThreadKind::Vcpu, || {
        // SAFETY: socket(2) takes no pointers.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert!(
        libc::WIFSIGNALED(status),
        "status {status:#x}, stderr {stderr}"
    );
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    assert_eq!(
        stderr,
        format!(
            "kiln-vmm: seccomp violation: syscall {} in the vcpu thread (first argument {}); the jail killed the vmm\n",
            libc::SYS_socket,
            libc::AF_INET
        )
    );
}

#[test]
fn a_forbidden_ioctl_number_kills_and_allowed_calls_pass() {
    let (status, stderr) = in_filtered_child(ThreadKind::Vcpu, || {
        let mut t = [0u8; 64];
        // SAFETY: TCGETS writes a termios (60 bytes) into `t`, which outlives the call.
        unsafe { libc::ioctl(0, libc::TCGETS, t.as_mut_ptr()) };
    });
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS);
    assert!(
        stderr.contains(&format!("syscall {}", libc::SYS_ioctl)),
        "{stderr}"
    );
    let (status, stderr) = in_filtered_child(ThreadKind::Virtio, || {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes into `b`, which outlives the call.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}: {stderr}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "{stderr}");
}

#[test]
fn every_refusal_says_why() {
    for kind in ThreadKind::ALL {
        for entry in refused(kind) {
            assert!(entry.why.len() > 5, "{kind:?}: syscall {}", entry.syscall);
        }
    }
}

#[test]
fn a_refused_syscall_fails_with_its_errno_and_the_thread_lives_on() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Virtio, ThreadKind::Main] {
        let (status, stderr) = in_filtered_child(kind, || {
            let path = c"/proc/sys/vm/overcommit_memory";
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if fd >= 0 || errno != Some(REFUSED_ERRNO as i32) {
                // SAFETY: leaving the forked child without running destructors.
                unsafe { libc::_exit(4) };
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{kind:?}: status {status:#x}: {stderr}"
        );
    }
}

#[test]
fn a_filtered_thread_may_free_much_memory() {
    // What the vsock flood did to the virtio thread: many small buffers,
    // then all freed, so the allocator trims its heap.
    let (status, stderr) = in_filtered_child(ThreadKind::Virtio, || {
        let bufs: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 512]).collect();
        drop(std::hint::black_box(bufs));
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}: {stderr}"
    );
}
