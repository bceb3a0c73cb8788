//! PVH boot: `hvm_start_info`, its module list (the initramfs) and memory
//! map, for a kernel entered in 32-bit protected mode with `rbx` pointing at
//! the start info.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PVH_END, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use super::memmap::MemRange;
use super::BootError;

/// Start-info version that carries a memory map.
const START_INFO_VERSION: u32 = 1;

/// Builds the start info for a command line at `cmdline_addr`, an optional
/// initramfs `(addr, size)` and `memmap_len` memory map entries.
pub fn start_info(
    cmdline_addr: u64,
    initramfs: Option<(u64, u64)>,
    memmap_len: usize,
) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: u32::from(initramfs.is_some()),
        modlist_paddr: if initramfs.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap_len as u32,
        reserved: 0,
    }
}

/// Writes the start info, module list and memory map; returns the start
/// info address for `rbx`.
pub fn write(
    mem: &GuestMemoryMmap,
    cmdline_addr: u64,
    initramfs: Option<(u64, u64)>,
    memmap: &[MemRange],
) -> Result<u64, BootError> {
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    if PVH_MEMMAP_START + entry_size * memmap.len() as u64 > PVH_END {
        return Err(BootError::MemoryMapTooLarge(memmap.len()));
    }
    let write_err = |_| BootError::GuestWrite("pvh start info");
    let info = start_info(cmdline_addr, initramfs, memmap.len());
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(write_err)?;
    if let Some((paddr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(write_err)?;
    }
    for (i, range) in memmap.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: range.addr,
            size: range.size,
            type_: range.kind.e820_type(),
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(PVH_MEMMAP_START + entry_size * i as u64),
        )
        .map_err(write_err)?;
    }
    Ok(PVH_INFO_START)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::boot::memmap;
    use crate::memory;

    #[test]
    fn start_info_points_at_everything() {
        let (mem, _) = memory::create(64 << 20, false).unwrap();
        let map = memmap::build(&mem);
        let addr = write(&mem, 0x20000, Some((0x300_0000, 0x1234)), &map).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        assert_eq!(info.memmap_entries as usize, map.len());
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                info.memmap_paddr + 24 * (map.len() as u64 - 1),
            ))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
        // The tables stay clear of the zero page.
        assert!(info.memmap_paddr + 24 * u64::from(info.memmap_entries) <= PVH_END);

        let info = start_info(0x20000, None, 3);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn rejects_oversized_memmap() {
        let (mem, _) = memory::create(64 << 20, false).unwrap();
        let map = vec![memmap::build(&mem)[0]; 200];
        assert!(matches!(
            write(&mem, 0, None, &map),
            Err(BootError::MemoryMapTooLarge(200))
        ));
    }
}
