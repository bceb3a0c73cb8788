//! Address-range dispatch for port I/O and MMIO exits.
//!
//! The vCPU loop hands every PIO/MMIO exit to a [`Bus`], which finds the device
//! whose range holds the address and calls it with the offset inside that
//! range. Devices never see absolute addresses, and no port or MMIO range is
//! hard-coded in the vCPU loop.
//!
//! Lock order: a device's own mutex is the only lock taken on this path; the
//! bus's range table is immutable once the VM runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The new range overlaps an existing one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

/// A shared, lockable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((offset, &entry.device))
    }

    /// Dispatches a read; returns false (and leaves `data` as all ones, as
    /// unclaimed hardware reads) when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .expect("bus device lock poisoned")
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .expect("bus device lock poisoned")
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x108, 0x10),
            Err(BusError::Overlap {
                base: 0x108,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0, 0),
            Err(BusError::InvalidRange { base: 0, len: 0 })
        );
        assert_eq!(
            bus.insert(dev.clone(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(dev.clone(), 0x110, 0x10).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x105, &mut buf));
        assert_eq!(buf, [5, 5]);
        assert!(!bus.read(0x120, &mut buf));
        assert_eq!(buf, [0xff, 0xff]);
        assert!(bus.write(0x111, &[7]));
        assert!(!bus.write(0xff, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
    }
}
