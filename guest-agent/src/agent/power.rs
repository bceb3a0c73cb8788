//! What `Shutdown` does: power the VM off in the guest, exit on the host.

use std::io::Read;
use std::time::Duration;

use super::conn::Conn;
use super::klog::klog;

/// How long to wait for the host to read the `Ok` before pulling the plug.
const ACK_GRACE: Duration = Duration::from_secs(1);

/// Waits (bounded) until the host has closed `conn`, so the
/// acknowledgement is not lost with the VM.
pub fn wait_for_host_close(conn: &mut Conn) {
    conn.shutdown_write();
    let _ = conn.set_read_timeout(Some(ACK_GRACE));
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + ACK_GRACE;
    while std::time::Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Syncs file systems and resets the machine. The guest kernel runs with
/// `reboot=k`, and the VMM turns the keyboard-controller reset into a VM
/// exit (power-off would only halt without ACPI). An `intended` shutdown is
/// announced on the boot-timer device first, so the VMM reports a clean exit;
/// otherwise (the agent failed) the VMM reports an unexpected reset. Never
/// returns.
pub fn reboot(intended: bool) -> ! {
    klog!("powering off");
    if intended {
        if let Err(e) = super::boot_timer::mark_shutdown_requested() {
            klog!("boot timer: {}", super::klog::chain(&e));
        }
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    loop {
        // SAFETY: reboot(2) with a valid command; as PID 1 with
        // CAP_SYS_BOOT this does not return on success.
        let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        klog!(
            "reboot failed (rc {rc}): {}",
            std::io::Error::last_os_error()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
