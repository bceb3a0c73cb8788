//! The guest's physical memory map, shared by the PVH memmap and the e820
//! table of the Linux boot protocol.

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{EBDA_START, HIMEM_START};

/// What a range of guest physical memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// Usable RAM.
    Ram,
    /// Reserved (BIOS area, MP table).
    Reserved,
}

impl RangeKind {
    /// The e820 / PVH memmap type number (both use 1 = RAM, 2 = reserved).
    pub fn e820_type(self) -> u32 {
        match self {
            RangeKind::Ram => 1,
            RangeKind::Reserved => 2,
        }
    }
}

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: RangeKind,
}

/// Builds the memory map: conventional memory below the EBDA, the reserved
/// BIOS area up to 1 MiB (it holds the MP table), then every RAM region.
pub fn build(mem: &GuestMemoryMmap) -> Vec<MemRange> {
    let mut map = vec![
        MemRange {
            addr: 0,
            size: EBDA_START,
            kind: RangeKind::Ram,
        },
        MemRange {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: RangeKind::Reserved,
        },
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(MemRange {
                addr: start,
                size: end - start,
                kind: RangeKind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::layout::{HIGH_RAM_START, MMIO_START};
    use crate::memory;

    #[test]
    fn small_vm_map() {
        let (mem, _) = memory::create(64 << 20, false).unwrap();
        let map = build(&mem);
        assert_eq!(
            map,
            vec![
                MemRange {
                    addr: 0,
                    size: 0x9fc00,
                    kind: RangeKind::Ram
                },
                MemRange {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: RangeKind::Reserved
                },
                MemRange {
                    addr: 0x100000,
                    size: (64 << 20) - 0x100000,
                    kind: RangeKind::Ram
                },
            ]
        );
        assert_eq!(map[1].kind.e820_type(), 2);
    }

    #[test]
    fn large_vm_map_skips_mmio_gap() {
        let (mem, _) = memory::create(5 << 30, false).unwrap();
        let map = build(&mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_START);
        assert_eq!(
            map[3],
            MemRange {
                addr: HIGH_RAM_START,
                size: (5 << 30) - MMIO_START,
                kind: RangeKind::Ram
            }
        );
        // Entries are sorted and do not overlap.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }
}
