//! COM1: a vm-superio 16550 whose output goes to a log file, with its
//! interrupt delivered through an irqfd. Off by default (every byte written
//! is a VM exit); input is not connected.

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};

use vm_superio::serial::NoEvents;
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
    /// eventfd to register as the IRQ 4 irqfd.
    pub fn new(path: &Path) -> Result<(Self, EventFd), SerialError> {
        let file = File::create(path).map_err(|source| SerialError::Log {
            path: path.to_owned(),
            source,
        })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let irq2 = irq.try_clone().map_err(SerialError::EventFd)?;
        let out = CappedWriter::new(LineWriter::new(file), SERIAL_LOG_LIMIT);
        let uart = vm_superio::Serial::new(IrqTrigger(irq2), out);
        Ok((
            Serial {
                uart,
                write_errors: 0,
            },
            irq,
        ))
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
        let (mut dev, irq) = Serial::new(&path).unwrap();
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
}
