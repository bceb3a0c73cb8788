//! The Linux 64-bit boot protocol: zero page (boot_params with e820 table)
//! and identity page tables for entering the kernel in long mode.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDPT_START, PD_START, PML4_START, ZERO_PAGE_START};
use super::memmap::MemRange;
use super::BootError;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// initrd_addr_max assumed when the kernel has no setup header.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

const PTE_PRESENT_RW: u64 = 0x3;
const PTE_HUGE: u64 = 0x80;

/// Builds boot_params from the kernel's setup header (if any).
pub fn zero_page(
    header: Option<setup_header>,
    cmdline: (u64, usize),
    initramfs: Option<(u64, u64)>,
    memmap: &[MemRange],
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr =
        u32::try_from(cmdline.0).map_err(|_| BootError::GuestWrite("cmdline address"))?;
    params.hdr.cmdline_size = cmdline.1 as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image =
            u32::try_from(addr).map_err(|_| BootError::GuestWrite("initramfs address"))?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| BootError::InitramfsTooBig { size, available: 0 })?;
    }
    if memmap.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::MemoryMapTooLarge(memmap.len()));
    }
    for (slot, range) in params.e820_table.iter_mut().zip(memmap) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: range.kind.e820_type(),
        };
    }
    params.e820_entries = memmap.len() as u8;
    Ok(params)
}

/// Page tables identity-mapping the first 1 GiB with 2 MiB pages:
/// (PML4, PDPT, PD) page contents.
pub fn page_tables() -> [Vec<u8>; 3] {
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_START | PTE_PRESENT_RW).to_le_bytes());
    let mut pdpt = vec![0u8; 4096];
    pdpt[..8].copy_from_slice(&(PD_START | PTE_PRESENT_RW).to_le_bytes());
    let mut pd = vec![0u8; 4096];
    for (i, entry) in pd.chunks_exact_mut(8).enumerate() {
        entry.copy_from_slice(&(((i as u64) << 21) | PTE_PRESENT_RW | PTE_HUGE).to_le_bytes());
    }
    [pml4, pdpt, pd]
}

/// Writes the zero page and page tables; returns (zero page, PML4) addresses.
pub fn write(mem: &GuestMemoryMmap, params: boot_params) -> Result<(u64, u64), BootError> {
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::GuestWrite("zero page"))?;
    for (table, addr) in page_tables().iter().zip([PML4_START, PDPT_START, PD_START]) {
        mem.write_slice(table, GuestAddress(addr))
            .map_err(|_| BootError::GuestWrite("page tables"))?;
    }
    Ok((ZERO_PAGE_START, PML4_START))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::boot::memmap;
    use crate::memory;

    #[test]
    fn zero_page_fields() {
        let (mem, _) = memory::create(128 << 20, false).unwrap();
        let map = memmap::build(&mem);
        let hdr = setup_header {
            init_size: 0x1234,
            version: 0x20f,
            ..Default::default()
        };
        let p = zero_page(Some(hdr), (0x20000, 42), Some((0x700_0000, 0x100)), &map).unwrap();
        let (ptr, size, image, rsize, init, magic, flag) = (
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.hdr.init_size,
            p.hdr.header,
            p.hdr.boot_flag,
        );
        assert_eq!(
            (ptr, size, image, rsize, init),
            (0x20000, 42, 0x700_0000, 0x100, 0x1234)
        );
        assert_eq!((magic, flag), (HDRS_MAGIC, BOOT_FLAG_MAGIC));
        assert_eq!(p.e820_entries as usize, map.len());
        let e = p.e820_table[2];
        let (addr, sz, ty) = (e.addr, e.size, e.r#type);
        assert_eq!((addr, sz, ty), (0x10_0000, (128 << 20) - 0x10_0000, 1));
        let p = zero_page(None, (0x20000, 1), None, &map).unwrap();
        let (align, image) = (p.hdr.kernel_alignment, p.hdr.ramdisk_image);
        assert_eq!((align, image), (KERNEL_ALIGNMENT, 0));
        let big = vec![map[0]; E820_MAX_ENTRIES_ZEROPAGE + 1];
        assert!(matches!(
            zero_page(None, (0, 1), None, &big),
            Err(BootError::MemoryMapTooLarge(_))
        ));
    }

    #[test]
    fn identity_map_covers_first_gib() {
        let [pml4, pdpt, pd] = page_tables();
        assert_eq!(
            u64::from_le_bytes(pml4[..8].try_into().unwrap()),
            PDPT_START | 3
        );
        assert_eq!(
            u64::from_le_bytes(pdpt[..8].try_into().unwrap()),
            PD_START | 3
        );
        let last = u64::from_le_bytes(pd[4088..].try_into().unwrap());
        assert_eq!(last, (511 << 21) | 0x83);
    }
}
