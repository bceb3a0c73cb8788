//! Holds one empty KVM VM open for the lifetime of the testbed.
//!
//! Creating the first VM on a host turns on KVM's preempt-notifier static key,
//! and destroying the last one turns it off; each switch live-patches
//! `__schedule` with int3-based text poking. Under QEMU's multi-threaded TCG
//! that patching races with the other vCPU executing the same code, and the
//! testbed kernel dies with "Oops: int3" in `__schedule` (seen after a few VM
//! boots). Keeping one VM alive means the key flips once, at testbed start,
//! and never again while tests create and destroy VMs.
//!
//! Usage: `kiln-testbed-keeper` — creates the VM, reports on stdout, then
//! sleeps until killed.

use std::ffi::CStr;

/// `KVM_CREATE_VM` = `_IO(0xAE, 0x01)`.
const KVM_CREATE_VM: libc::c_ulong = 0xae01;

fn main() -> std::process::ExitCode {
    let path: &CStr = c"/dev/kvm";
    // SAFETY: opening a NUL-terminated path; the result is checked.
    let kvm = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if kvm < 0 {
        eprintln!(
            "testbed-keeper: open /dev/kvm: {}",
            std::io::Error::last_os_error()
        );
        return std::process::ExitCode::FAILURE;
    }
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a
    // new fd or -1; nothing is read from or written to our memory.
    let vm = unsafe { libc::ioctl(kvm, KVM_CREATE_VM, 0) };
    if vm < 0 {
        eprintln!(
            "testbed-keeper: KVM_CREATE_VM: {}",
            std::io::Error::last_os_error()
        );
        return std::process::ExitCode::FAILURE;
    }
    println!("testbed-keeper: holding VM fd {vm}");
    loop {
        // SAFETY: pause(2) has no preconditions; it returns only on a signal.
        unsafe { libc::pause() };
    }
}
