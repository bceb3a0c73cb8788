//! Guest RAM: anonymous, lazily-populated mappings split around the MMIO gap.
//!
//! Regions are mapped `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` by
//! vm-memory and never touched by the VMM before the guest touches them
//! (apart from the few pages the boot code writes), so an idle VM costs only
//! the pages its guest has used.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub use vm_memory::GuestMemoryMmap;

use crate::hypervisor::{HypervisorError, Vm};
use crate::layout::{HIGH_RAM_START, MMIO_START};

/// Errors from setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not page-aligned.
    #[error("invalid guest memory size {0:#x}")]
    InvalidSize(u64),
    /// The host refused the mapping.
    #[error("cannot map {size:#x} bytes of guest memory: {source}")]
    Mmap {
        /// Requested size in bytes.
        size: u64,
        /// Underlying error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The hypervisor refused to map a region.
    #[error("cannot register guest memory with the hypervisor: {0}")]
    Register(#[source] HypervisorError),
}

/// The guest-physical RAM ranges for `size` bytes of RAM: below the MMIO gap,
/// then above 4 GiB for the rest.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > MMIO_START {
        ranges.push((GuestAddress(HIGH_RAM_START), size - MMIO_START));
    }
    ranges
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_START)
        .map(|r| r.start_addr().raw_value() + r.len())
        .max()
        .unwrap_or(0)
}

/// Maps `size` bytes of guest RAM (no pages are touched).
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || !size.is_multiple_of(4096) || usize::try_from(size).is_err() {
        return Err(MemoryError::InvalidSize(size));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, len)| (a, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { size, source })
}

/// Registers every region of `mem` with the VM, one slot per region.
///
/// # Safety
/// `mem` must outlive every use of `vm` that can reach guest memory (keep it
/// alive until the VM and its vCPUs are dropped).
pub unsafe fn register(vm: &dyn Vm, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        // SAFETY: the region is a live mapping owned by `mem`, which the caller
        // keeps alive for as long as the VM can access it.
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().raw_value(),
                region.len(),
                host,
            )
        }
        .map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_gap() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
        assert_eq!(ram_ranges(MMIO_START), vec![(GuestAddress(0), MMIO_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (GuestAddress(0), MMIO_START),
                (GuestAddress(HIGH_RAM_START), (4 << 30) - MMIO_START)
            ]
        );
    }

    #[test]
    fn create_large_memory_is_lazy_and_split() {
        // 8 GiB of NORESERVE mappings costs nothing until touched.
        let mem = create(8 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(low_ram_end(&mem), MMIO_START);
        assert!(mem.address_in_range(GuestAddress(HIGH_RAM_START + (5 << 30) - 1)));
        assert!(!mem.address_in_range(GuestAddress(HIGH_RAM_START + (5 << 30))));
        assert!(!mem.address_in_range(GuestAddress(MMIO_START)));
        assert!(matches!(create(0), Err(MemoryError::InvalidSize(0))));
        assert!(matches!(create(4097), Err(MemoryError::InvalidSize(4097))));
    }
}
