//! The seccomp filter of each kiln-vmm thread on x86_64: one entry per
//! syscall, with the argument values it is limited to and the reason the
//! thread needs it. A few syscalls are refused with an errno instead
//! ([`refused`]); anything else traps and kills the VMM with a report
//! (`super::report`).

use libc::{
    SYS_accept4, SYS_brk, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close, SYS_connect,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_wait, SYS_exit, SYS_exit_group, SYS_fdatasync,
    SYS_fsync, SYS_ftruncate, SYS_futex, SYS_getpid, SYS_getrandom, SYS_ioctl, SYS_kill, SYS_lseek,
    SYS_madvise, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap, SYS_nanosleep, SYS_newfstatat,
    SYS_pread64, SYS_preadv, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_readv, SYS_recvfrom,
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigtimedwait, SYS_sched_yield,
    SYS_sendto, SYS_setsockopt, SYS_shutdown, SYS_sigaltstack, SYS_socket, SYS_statx, SYS_tgkill,
    SYS_timerfd_settime, SYS_unlink, SYS_wait4, SYS_write, SYS_writev, AF_UNIX, FIONBIO,
    MAP_SHARED, PROT_EXEC, SOCK_STREAM, SOL_SOCKET,
};
use libc::{SYS_fcntl, SYS_openat, F_GETFD};

use super::rules::{any, refuse, when, when_any, Allowed, ArgCheck, Refused, Runtime, ThreadKind};
use crate::hypervisor::kvm::seccomp::{vcpu_run_ioctls, vcpu_snapshot_ioctls, vm_snapshot_ioctls};

/// The socket type bits of `socket(2)`'s second argument (flags masked off).
const SOCK_TYPE_MASK: u64 = 0xf;

/// Every syscall `kind` may make.
pub fn allowed(kind: ThreadKind, rt: &Runtime) -> Vec<Allowed> {
    let mut list = process_basics();
    list.extend(match kind {
        ThreadKind::Supervisor => supervisor(rt),
        ThreadKind::Main => main_thread(rt),
        ThreadKind::Signals => signals(),
        ThreadKind::Vcpu => vcpu(),
        ThreadKind::Virtio => virtio(),
        ThreadKind::Control => control(rt),
    });
    list
}

/// What `kind` may attempt but must see fail (the same for every kind: any
/// thread allocates).
pub fn refused(_kind: ThreadKind) -> Vec<Refused> {
    vec![refuse(
        SYS_openat,
        "glibc's malloc opens /proc/sys/vm/overcommit_memory the first time a \
         thread's heap shrinks (found by a guest flooding vsock, which made the \
         virtio thread free a lot) and treats a failure as 'do not unmap'; no \
         thread opens anything once running, and the jail's root holds nothing",
    )]
}

/// What every thread of the process needs: the allocator, locks, logging,
/// time, signal returns and exiting.
fn process_basics() -> Vec<Allowed> {
    let no_exec = ArgCheck::masked(2, PROT_EXEC as u64, 0);
    vec![
        when(
            SYS_mmap,
            vec![no_exec, ArgCheck::masked(3, MAP_SHARED as u64, 0)],
            "allocator: private memory, never executable",
        ),
        when(
            SYS_mprotect,
            vec![no_exec],
            "allocator: growing an arena, never executable",
        ),
        any(SYS_munmap, "allocator: freeing memory"),
        any(SYS_mremap, "allocator: growing a large allocation"),
        any(SYS_madvise, "allocator and thread exit: returning pages"),
        any(SYS_brk, "allocator: the main heap"),
        any(SYS_futex, "mutexes, condition variables, thread joins"),
        any(
            SYS_write,
            "logs on stderr, eventfd signals, this filter's own report",
        ),
        any(
            SYS_clock_gettime,
            "time when the vDSO falls back to the kernel",
        ),
        any(SYS_clock_nanosleep, "std::thread::sleep"),
        any(SYS_nanosleep, "std::thread::sleep (older libc)"),
        any(SYS_sched_yield, "lock back-off"),
        any(SYS_getrandom, "hash map keys"),
        any(SYS_close, "dropping descriptors"),
        when(
            SYS_fcntl,
            vec![ArgCheck::eq32(1, F_GETFD as u64)],
            "debug builds of std check a descriptor is open before closing it",
        ),
        any(SYS_rt_sigreturn, "returning from the vCPU kick handler"),
        any(SYS_rt_sigprocmask, "thread exit blocks signals"),
        any(
            SYS_sigaltstack,
            "thread exit removes the stack-overflow handler stack",
        ),
        any(SYS_exit, "thread exit"),
        any(SYS_exit_group, "process exit"),
    ]
}

/// The waiting parent of the VMM's pid namespace.
fn supervisor(rt: &Runtime) -> Vec<Allowed> {
    let mut kill_targets = vec![vec![ArgCheck::eq32(0, rt.pid)]];
    if let Some(child) = rt.child {
        kill_targets.push(vec![ArgCheck::eq32(0, child)]);
    }
    vec![
        any(SYS_rt_sigtimedwait, "waiting for signals to forward"),
        any(SYS_wait4, "reaping the VMM"),
        when_any(
            SYS_kill,
            kill_targets,
            "forwarding signals to the VMM; dying of the VMM's signal",
        ),
        any(SYS_getpid, "dying of the VMM's signal"),
        any(
            SYS_rt_sigaction,
            "restoring the default action of the VMM's signal",
        ),
        any(SYS_statx, "is the vsock socket the VMM's own"),
        any(
            SYS_newfstatat,
            "is the vsock socket the VMM's own (older libc)",
        ),
        any(SYS_unlink, "removing the VMM's vsock socket after it exits"),
        any(
            libc::SYS_unlinkat,
            "removing the VMM's cgroup after it exits",
        ),
    ]
}

/// The VMM's main thread after start: wait for the exit, kick and join
/// the vCPUs, stop the event loop, write the timings, remove the socket.
fn main_thread(rt: &Runtime) -> Vec<Allowed> {
    vec![
        any(SYS_getpid, "pthread_kill asks for the pid"),
        when(
            SYS_tgkill,
            vec![ArgCheck::eq32(0, rt.pid), ArgCheck::eq32(2, rt.kick_signal)],
            "kicking its own vCPU threads out of the guest",
        ),
        any(SYS_lseek, "rewinding the timings file"),
        any(SYS_ftruncate, "truncating the timings file"),
        any(SYS_unlink, "removing the vsock and control sockets"),
        any(SYS_shutdown, "waking the control thread's accept at exit"),
    ]
}

/// `kiln-signals`.
fn signals() -> Vec<Allowed> {
    vec![any(
        SYS_rt_sigtimedwait,
        "sigwait for SIGTERM, SIGINT, SIGUSR1",
    )]
}

/// `kiln-vcpuN`: KVM_RUN and the devices its exits reach (serial log,
/// eventfds, a device reset closing vsock streams).
fn vcpu() -> Vec<Allowed> {
    let ioctls = vcpu_run_ioctls()
        .iter()
        .chain(vcpu_snapshot_ioctls().iter())
        .map(|(request, _)| vec![ArgCheck::eq32(1, *request)])
        .collect();
    vec![
        when_any(
            SYS_ioctl,
            ioctls,
            "KVM_RUN, the crash report's register reads, and a parked vCPU saving its state for a snapshot (hypervisor::kvm::seccomp)",
        ),
        any(SYS_read, "eventfds"),
        any(SYS_shutdown, "a device reset closes vsock streams"),
        any(SYS_unlink, "the last vsock reference may drop here at exit"),
    ]
}

/// `kiln-control`: the control socket, and taking a snapshot: kick the
/// vCPUs into parking, read the VM-wide KVM state, write the snapshot
/// files (opened when the VM was built: this thread opens nothing).
fn control(rt: &Runtime) -> Vec<Allowed> {
    let ioctls = vm_snapshot_ioctls()
        .iter()
        .map(|(request, _)| vec![ArgCheck::eq32(1, *request)])
        .collect();
    vec![
        any(SYS_accept4, "control clients"),
        any(SYS_read, "a client's request line"),
        any(SYS_recvfrom, "a client's request line"),
        any(SYS_sendto, "the reply line"),
        when(
            SYS_setsockopt,
            vec![ArgCheck::eq32(1, SOL_SOCKET as u64)],
            "the request read timeout (SO_RCVTIMEO)",
        ),
        any(SYS_getpid, "pthread_kill asks for the pid"),
        when(
            SYS_tgkill,
            vec![ArgCheck::eq32(0, rt.pid), ArgCheck::eq32(2, rt.kick_signal)],
            "kicking the vCPU threads out of the guest to park them",
        ),
        when_any(
            SYS_ioctl,
            ioctls,
            "snapshot: the VM's irqchips, PIT and clock",
        ),
        any(SYS_pwrite64, "writing the state and guest memory files"),
        any(
            SYS_ftruncate,
            "emptying and sizing the snapshot files (holes for zero pages)",
        ),
        any(SYS_fsync, "making the snapshot durable"),
        any(SYS_shutdown, "a snapshot drops vsock host streams"),
    ]
}

/// `kiln-virtio`: the event loop, vsock's unix sockets, disks, entropy.
fn virtio() -> Vec<Allowed> {
    vec![
        any(SYS_epoll_wait, "the event loop"),
        any(SYS_epoll_pwait, "the event loop (newer libc)"),
        any(SYS_epoll_ctl, "watching vsock streams"),
        any(SYS_read, "eventfds, timerfd, vsock streams"),
        any(SYS_readv, "vsock streams"),
        any(SYS_writev, "vsock streams"),
        any(SYS_recvfrom, "vsock streams"),
        any(SYS_sendto, "vsock streams"),
        any(SYS_accept4, "host clients on the vsock socket"),
        when(
            SYS_socket,
            vec![
                ArgCheck::eq32(0, AF_UNIX as u64),
                ArgCheck::masked(1, SOCK_TYPE_MASK, SOCK_STREAM as u64),
            ],
            "guest-initiated vsock connections: unix stream sockets only",
        ),
        any(
            SYS_connect,
            "guest-initiated vsock connections to <uds>_<port>",
        ),
        any(SYS_shutdown, "closing vsock streams"),
        when_any(
            SYS_ioctl,
            vec![
                vec![ArgCheck::eq32(1, FIONBIO)],
                vec![ArgCheck::eq32(1, libc::FIONREAD)],
                vec![ArgCheck::eq32(1, libc::TIOCOUTQ)],
            ],
            "making accepted streams non-blocking; the SIGUSR1 state dump reads the bytes queued in each vsock stream (FIONREAD, TIOCOUTQ)",
        ),
        any(SYS_timerfd_settime, "vsock connect and credit timers"),
        any(SYS_pread64, "virtio-blk reads"),
        any(SYS_preadv, "virtio-blk reads"),
        any(SYS_pwrite64, "virtio-blk writes"),
        any(SYS_pwritev, "virtio-blk writes"),
        any(SYS_fsync, "virtio-blk flush"),
        any(SYS_fdatasync, "virtio-blk flush"),
        any(
            SYS_unlink,
            "the vsock device removes its socket when dropped",
        ),
    ]
}
