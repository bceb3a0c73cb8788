//! Kicking a vCPU thread out of a blocking `run` with a real-time signal.
//!
//! The handler does nothing: its only effect is that `KVM_RUN` returns `EINTR`
//! in the signalled thread, which the hypervisor layer reports as
//! [`crate::hypervisor::VcpuExit::Interrupted`].

use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Offset from `SIGRTMIN` of the signal used to kick vCPU threads.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// The signal number used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op kick handler once per process. Must run before the first
/// vCPU thread may be kicked.
pub fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Sends the kick signal to a thread.
pub fn kick(thread: libc::pthread_t) -> std::io::Result<()> {
    // SAFETY: pthread_kill only reads its arguments; a stale thread id yields
    // ESRCH (reported as an error), and the handler installed above is
    // async-signal-safe (it does nothing).
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// The calling thread's id, to be handed to [`kick`] by another thread.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}
