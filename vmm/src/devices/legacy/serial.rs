//! COM1: a vm-superio 16550 whose output goes to a log file, with its
//! interrupt delivered through an irqfd. Off by default (every byte written
//! is a VM exit); input is not connected. Its registers go into snapshots
//! ([`SerialSnapshot`]), so a restored guest's console keeps working.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Most bytes of guest serial output kept in the log; the rest is dropped so
/// a guest cannot fill the host disk.
pub const SERIAL_LOG_LIMIT: u64 = 64 << 20;

/// Errors from setting up the serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The log file could not be created.
    #[error("cannot create serial log {path}: {source}")]
    Log {
        /// Log path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The interrupt eventfd could not be created.
    #[error("cannot create serial interrupt eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// A snapshot's serial state cannot be loaded.
    #[error("cannot restore the serial port: {0}")]
    State(String),
}

/// The 16550's registers and receive FIFO, as a snapshot holds them.
/// vm-superio's `SerialState` has no serde; its companion `vm-superio-ser`
/// pins vm-superio to `=0.8.1` and pulls in `versionize`, so the mirror is
/// kept here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read (bounded by the FIFO size).
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Raises the serial interrupt by writing the irqfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> Result<(), io::Error> {
        self.0.write(1)
    }
}

/// A writer that stops writing after `limit` bytes.
pub struct CappedWriter<W> {
    inner: W,
    left: u64,
}

impl<W: Write> CappedWriter<W> {
    /// Wraps `inner`, accepting at most `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        CappedWriter { inner, left: limit }
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let keep = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if keep > 0 {
            self.inner.write_all(&buf[..keep])?;
            self.left -= keep as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Uart = vm_superio::Serial<IrqTrigger, NoEvents, CappedWriter<LineWriter<File>>>;

/// The COM1 device on the port I/O bus.
pub struct Serial {
    uart: Uart,
    write_errors: u64,
}

impl Serial {
    /// Creates (truncating) the log at `path`; returns the device and the
    /// eventfd to register as the IRQ 4 irqfd. With `state` (a restore) the
    /// port starts with a snapshot's registers, and a pending interrupt is
    /// raised again.
    pub fn new(
        path: &Path,
        state: Option<&SerialSnapshot>,
    ) -> Result<(Self, EventFd), SerialError> {
        let file = File::create(path).map_err(|source| SerialError::Log {
            path: path.to_owned(),
            source,
        })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let irq2 = irq.try_clone().map_err(SerialError::EventFd)?;
        let out = CappedWriter::new(LineWriter::new(file), SERIAL_LOG_LIMIT);
        let state = state.map(SerialState::from).unwrap_or_default();
        let uart = vm_superio::Serial::from_state(&state, IrqTrigger(irq2), NoEvents, out)
            .map_err(|e| SerialError::State(e.to_string()))?;
        Ok((
            Serial {
                uart,
                write_errors: 0,
            },
            irq,
        ))
    }

    /// The port's registers, for a snapshot (every vCPU paused).
    pub fn save(&self) -> SerialSnapshot {
        self.uart.state().into()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if data.len() == 1 {
            self.uart.read(offset as u8)
        } else {
            0
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            if let Err(e) = self.uart.write(offset as u8, *value) {
                self.write_errors += 1;
                // Rate limit: the guest can trigger this on every byte.
                if self.write_errors.is_power_of_two() {
                    tracing::warn!("serial write failed ({} times): {e:?}", self.write_errors);
                }
            }
        }
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn capped_writer_drops_the_excess() {
        let mut w = CappedWriter::new(Vec::new(), 5);
        assert_eq!(w.write(b"abc").unwrap(), 3);
        assert_eq!(w.write(b"defg").unwrap(), 4);
        assert_eq!(w.write(b"h").unwrap(), 1);
        assert_eq!(w.inner, b"abcde");
    }

    #[test]
    fn bytes_reach_the_log_and_raise_the_interrupt() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        let (mut dev, irq) = Serial::new(&path, None).unwrap();
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert!(irq.read().unwrap() >= 1, "interrupt raised");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
        dev.write(0, b"xy"); // wrong width: ignored
        drop(dev);
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_survives_a_restore_and_the_port_keeps_working() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut dev, _irq) = Serial::new(&dir.join("a.log"), None).unwrap();
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(7, &[0x5a]); // scratch
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        let saved = dev.save();
        assert_eq!((saved.line_control, saved.scratch), (0x03, 0x5a));
        let json = serde_json::to_string(&saved).unwrap();
        let back: SerialSnapshot = serde_json::from_str(&json).unwrap();
        let path = dir.join("b.log");
        let (mut clone, irq) = Serial::new(&path, Some(&back)).unwrap();
        assert_eq!(clone.save(), saved);
        let mut scratch = [0u8];
        clone.read(7, &mut scratch);
        assert_eq!(scratch[0], 0x5a);
        for b in b"ok\n" {
            clone.write(0, &[*b]);
        }
        assert!(irq.read().unwrap() >= 1, "interrupt raised");
        drop(clone);
        assert_eq!(std::fs::read(&path).unwrap(), b"ok\n");
        // A receive FIFO larger than the 16550's is refused.
        let mut bad = saved.clone();
        bad.in_buffer = vec![0; 4096];
        assert!(matches!(
            Serial::new(&path, Some(&bad)),
            Err(SerialError::State(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
