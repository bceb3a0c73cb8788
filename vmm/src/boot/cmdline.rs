//! The kernel command line: kiln's fast-boot base, the console, device
//! fragments and the caller's extra arguments.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::CMDLINE_MAX_SIZE;

/// Arguments every kiln guest gets: reset through the keyboard controller
/// (the VMM turns it into a clean exit), reboot at once on panic, no i8042
/// probing, trust the TSC, quiet boot.
pub const BASE: &str = "reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd \
                        tsc=reliable no_timer_check quiet";
/// Console arguments when the serial port is on.
pub const SERIAL_CONSOLE: &str = "console=ttyS0";
/// Arguments when the serial port is off: no console and no UART probing.
pub const NO_CONSOLE: &str = "8250.nr_uarts=0";

/// Errors from building the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// The command line does not fit the kernel's buffer.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    TooLong {
        /// Length without the terminating NUL.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// The command line holds a NUL or a non-printable character.
    #[error("kernel command line holds a NUL, control or non-ASCII character")]
    Invalid,
    /// Guest memory write failed.
    #[error("cannot write the kernel command line to guest memory")]
    Write,
}

/// Builds the full command line. `devices` are fragments such as
/// `virtio_mmio.device=4K@0xd0001000:5`; `extra` comes last so it can
/// override kiln's choices.
pub fn build(serial: bool, devices: &[String], extra: &str) -> Result<String, CmdlineError> {
    let console = if serial { SERIAL_CONSOLE } else { NO_CONSOLE };
    let mut parts = vec![BASE, console];
    parts.extend(devices.iter().map(String::as_str));
    let extra = extra.trim();
    if !extra.is_empty() {
        parts.push(extra);
    }
    let line = parts.join(" ");
    if line.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(CmdlineError::Invalid);
    }
    if line.len() >= CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong {
            len: line.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    Ok(line)
}

/// Writes `line` with its terminating NUL at `addr`.
pub fn write(mem: &GuestMemoryMmap, addr: u64, line: &str) -> Result<(), CmdlineError> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|_| CmdlineError::Write)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn assembles_in_order() {
        let line = build(
            false,
            &["virtio_mmio.device=4K@0xd0001000:5".into()],
            "  init=/x ",
        )
        .unwrap();
        assert!(line.starts_with(BASE));
        assert!(line.contains(NO_CONSOLE));
        assert!(!line.contains("console=ttyS0"));
        assert!(line.ends_with("virtio_mmio.device=4K@0xd0001000:5 init=/x"));
        let line = build(true, &[], "").unwrap();
        assert!(line.ends_with(" console=ttyS0"));
        assert!(!line.contains("nr_uarts"));
    }

    #[test]
    fn rejects_hostile_input() {
        assert_eq!(build(false, &[], "a\0b"), Err(CmdlineError::Invalid));
        assert_eq!(build(false, &[], "a\nb"), Err(CmdlineError::Invalid));
        assert_eq!(build(false, &[], "é"), Err(CmdlineError::Invalid));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build(false, &[], &long),
            Err(CmdlineError::TooLong { .. })
        ));
    }

    #[test]
    fn writes_nul_terminated() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        write(&mem, 0x10, "ab").unwrap();
        let mut buf = [0xffu8; 3];
        mem.read_slice(&mut buf, GuestAddress(0x10)).unwrap();
        assert_eq!(&buf, b"ab\0");
        assert_eq!(write(&mem, 0xfff, "ab"), Err(CmdlineError::Write));
    }
}
