//! The SIGSYS handler behind every filter: a forbidden syscall traps
//! (`SECCOMP_RET_TRAP`), this handler writes one line naming the syscall
//! and the thread to stderr, then repeats the same syscall. SIGSYS is
//! blocked while its handler runs, so the kernel now delivers it with the
//! default action: the whole process dies of SIGSYS, and its parent sees
//! both the line and the signal.

use std::cell::Cell;
use std::io;
use std::sync::Once;

use super::rules::ThreadKind;

thread_local! {
    /// The kind of the calling thread's filter, for the report (const, so
    /// reading it in a signal handler touches no lazy initialisation).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Records which filter this thread runs under.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

/// The fields the kernel fills in for a seccomp SIGSYS (`_sigsys` in the
/// siginfo union, x86_64 layout).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// The report line for `syscall` (first argument `arg0`, which tells
/// prctl's or ioctl's operations apart) in a thread of `kind`, written into
/// `buf` without allocating; returns its length.
pub(super) fn format_report(
    buf: &mut [u8; 160],
    syscall: i64,
    arg0: i64,
    kind: Option<ThreadKind>,
) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    let decimal = |value: i64, put: &mut dyn FnMut(&[u8])| {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if value < 0 {
            put(b"-");
        }
        put(&digits[at..]);
    };
    put(b"kiln-vmm: seccomp violation: syscall ");
    decimal(syscall, &mut put);
    put(b" in the ");
    put(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    put(b" thread (first argument ");
    decimal(arg0, &mut put);
    put(b"); the jail killed the vmm\n");
    len
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose union
    // holds `_sigsys` (SigsysInfo's layout) when si_code is SYS_SECCOMP.
    let syscall = i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall });
    // SAFETY: SA_SIGINFO handlers get a ucontext_t; its general registers
    // hold the trapped call's arguments (rdi, rsi, rdx, r10, r8, r9).
    let regs = unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let arg = |r: libc::c_int| regs[r as usize];
    let kind = KIND.with(Cell::get);
    let mut line = [0u8; 160];
    let len = format_report(&mut line, syscall, arg(libc::REG_RDI), kind);
    // SAFETY: write(2) is async-signal-safe and `line` holds `len` bytes.
    unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len) };
    // SAFETY: the same call with the same arguments meets the same filter
    // verdict, so it traps again and never runs; with SIGSYS blocked in
    // this handler the kernel delivers it with the default action (death).
    unsafe {
        libc::syscall(
            syscall,
            arg(libc::REG_RDI),
            arg(libc::REG_RSI),
            arg(libc::REG_RDX),
            arg(libc::REG_R10),
            arg(libc::REG_R8),
            arg(libc::REG_R9),
        );
        // Not reached; should the call somehow return, still never go on.
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS);
    }
}

/// Installs the SIGSYS handler once per process.
pub(super) fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; the fields are set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised and outlives the call; the
        // handler only makes async-signal-safe calls.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
        if rc != 0 {
            result = Err(io::Error::last_os_error());
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_the_syscall_and_thread() {
        let mut buf = [0u8; 160];
        let n = format_report(&mut buf, 41, -2, Some(ThreadKind::Vcpu));
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap_or(""),
            "kiln-vmm: seccomp violation: syscall 41 in the vcpu thread (first argument -2); the jail killed the vmm\n"
        );
        let n = format_report(&mut buf, 0, 0, None);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap_or("")
            .contains("syscall 0 in the unfiltered thread"));
    }
}
