//! Tells the VMM's boot-timer device that userspace has started.
//!
//! The device decodes MMIO writes at [`BOOT_TIMER_ADDR`]; writing
//! [`USERSPACE_STARTED`] there makes the VMM record the boot time. We reach
//! the physical address through `/dev/mem`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

/// Guest-physical address of the boot-timer device.
pub const BOOT_TIMER_ADDR: u64 = 0xD000_0000;
/// Value that means "userspace started".
pub const USERSPACE_STARTED: u8 = 123;
/// Value that means "the reset that follows is an intended shutdown" (without
/// it the VMM reports the reset as a kernel panic or unrequested reboot).
pub const SHUTDOWN_REQUESTED: u8 = 124;

/// Inode number of the initial pid namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// Why the boot timer could not be marked.
#[derive(Debug, Error)]
pub enum BootTimerError {
    /// PID 1 of a container, not of a VM: `/dev/mem` is the host's memory.
    #[error("not in the initial pid namespace (container?), not touching /dev/mem")]
    NotAVm,
    /// The pid namespace could not be checked (is /proc mounted?).
    #[error("cannot check the pid namespace")]
    Namespace(#[source] io::Error),
    /// `/dev/mem` could not be opened.
    #[error("cannot open /dev/mem")]
    Open(#[source] io::Error),
    /// The page could not be mapped.
    #[error("cannot map the boot-timer page")]
    Map(#[source] io::Error),
}

/// Writes the "userspace started" marker.
pub fn mark_userspace_started() -> Result<(), BootTimerError> {
    write_marker(USERSPACE_STARTED)
}

/// Announces that the next reset is an intended shutdown.
pub fn mark_shutdown_requested() -> Result<(), BootTimerError> {
    write_marker(SHUTDOWN_REQUESTED)
}

/// Writes `value` to the boot-timer device.
fn write_marker(value: u8) -> Result<(), BootTimerError> {
    // Running as PID 1 of a container would poke physical memory of the real
    // machine: only write when in the initial pid namespace. A kernel built
    // without namespaces (kiln's own) has no /proc/self/ns at all, and then
    // there are no containers to be in.
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(ns) if std::os::unix::fs::MetadataExt::ino(&ns) != INIT_PID_NS_INODE => {
            return Err(BootTimerError::NotAVm);
        }
        Ok(_) => {}
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && std::path::Path::new("/proc/self").exists() => {}
        Err(e) => return Err(BootTimerError::Namespace(e)),
    }
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC | libc::O_CLOEXEC)
        .open("/dev/mem")
        .map_err(BootTimerError::Open)?;
    let page = 4096;
    let offset = libc::off_t::try_from(BOOT_TIMER_ADDR)
        .map_err(|_| BootTimerError::Map(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: maps one page of /dev/mem at a page-aligned offset; the
    // result is checked before use and unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(BootTimerError::Map(io::Error::last_os_error()));
    }
    // SAFETY: `ptr` is a live writable mapping of at least one byte; a
    // volatile write makes sure the MMIO store is actually issued.
    unsafe { std::ptr::write_volatile(ptr.cast::<u8>(), value) };
    // SAFETY: `ptr`/`page` are exactly the mapping created above, and no
    // reference into it outlives this call.
    unsafe { libc::munmap(ptr, page) };
    Ok(())
}

/// Kernel command-line flag asking for a console line at userspace start, for
/// VMMs without kiln's boot-timer device (benchmark peers such as QEMU).
const CONSOLE_MARK_FLAG: &str = "kiln.console_mark";
/// The line written to `/dev/console` when the flag is present.
pub const CONSOLE_MARK_LINE: &str = "kiln-agent: userspace started\n";

/// Kernel command-line flag asking for the kernel log, copied to the console
/// once userspace has started: a boot profile (printk times, initcall_debug)
/// without a console slowing the boot it measures.
const BOOT_LOG_FLAG: &str = "kiln.boot_log";
/// The line that ends the copied kernel log.
pub const BOOT_LOG_END_LINE: &str = "kiln-agent: boot log end\n";
/// Most kernel log records copied (the ring buffer holds fewer in practice).
const BOOT_LOG_MAX_RECORDS: usize = 20_000;

/// How long after the mark the kernel log is copied: long enough for the
/// agent's own "serving" line to be in it.
const BOOT_LOG_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes [`CONSOLE_MARK_LINE`] to the console when the kernel command line
/// holds `kiln.console_mark`; with `kiln.boot_log` as well, a thread copies
/// the kernel log there a moment later. Returns whether it wrote the mark.
pub fn mark_on_console_if_asked() -> io::Result<bool> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let has = |flag: &str| cmdline.split_whitespace().any(|w| w == flag);
    if !has(CONSOLE_MARK_FLAG) {
        return Ok(false);
    }
    let mut console = OpenOptions::new().write(true).open("/dev/console")?;
    io::Write::write_all(&mut console, CONSOLE_MARK_LINE.as_bytes())?;
    if has(BOOT_LOG_FLAG) {
        // Off the agent's start-up path: the copy must not delay what the
        // profile measures.
        std::thread::spawn(move || {
            std::thread::sleep(BOOT_LOG_DELAY);
            if let Err(e) = write_boot_log(&mut console) {
                crate::agent::klog::klog!("boot log: {e}");
            }
        });
    }
    Ok(true)
}

/// The kernel log, the CPU features the guest was shown (to compare VMMs'
/// CPUID) and [`BOOT_LOG_END_LINE`].
fn write_boot_log(console: &mut std::fs::File) -> io::Result<()> {
    copy_kernel_log(console)?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for line in cpuinfo.lines().take_while(|l| !l.is_empty()) {
        if line.starts_with("flags") || line.starts_with("model name") {
            io::Write::write_all(console, format!("cpuinfo: {line}\n").as_bytes())?;
        }
    }
    io::Write::write_all(console, BOOT_LOG_END_LINE.as_bytes())
}

/// Copies every record in the kernel log to `out` as `[secs.micros] text`
/// lines, the console's printk-time format.
fn copy_kernel_log(out: &mut impl io::Write) -> io::Result<()> {
    let mut kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")?;
    // One record per read; records longer than this are cut by the kernel
    // (EINVAL), which ends the copy rather than losing the rest silently.
    let mut buf = vec![0u8; 8192];
    for _ in 0..BOOT_LOG_MAX_RECORDS {
        let n = match io::Read::read(&mut kmsg, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Records overwritten while we read: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        };
        if let Some(line) = format_kmsg_record(&buf[..n]) {
            out.write_all(line.as_bytes())?;
        }
    }
    Ok(())
}

/// Turns one `/dev/kmsg` record (`prio,seq,usecs,flags;text\n` plus
/// continuation lines) into a console-style line; `None` for a malformed one.
fn format_kmsg_record(record: &[u8]) -> Option<String> {
    let record = String::from_utf8_lossy(record);
    let (header, rest) = record.split_once(';')?;
    let usecs: u64 = header.split(',').nth(2)?.parse().ok()?;
    let text = rest.lines().next().unwrap_or("");
    Some(format!(
        "[{:5}.{:06}] {text}\n",
        usecs / 1_000_000,
        usecs % 1_000_000
    ))
}

#[cfg(test)]
mod tests {
    use super::format_kmsg_record;

    #[test]
    fn kmsg_record_becomes_a_console_line() {
        let line =
            format_kmsg_record(b"6,339,5140900,-;NET: Registered PF_VSOCK\n SUBSYSTEM=net\n");
        assert_eq!(
            line.as_deref(),
            Some("[    5.140900] NET: Registered PF_VSOCK\n")
        );
    }

    #[test]
    fn malformed_kmsg_records_are_skipped() {
        assert_eq!(format_kmsg_record(b"no header here"), None);
        assert_eq!(format_kmsg_record(b"6,339,notanumber,-;text"), None);
        assert_eq!(format_kmsg_record(b"6,339;text"), None);
    }
}
