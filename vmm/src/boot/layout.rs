//! Where the boot code puts things in guest low memory.
//!
//! ```text
//! 0x6000   PVH hvm_start_info, then its module list and memory map
//! 0x7000   zero page (Linux boot_params)
//! 0x8ff0   initial stack (grows down)
//! 0x9000   PML4, 0xa000 PDPT, 0xb000 PD: identity map of the first 1 GiB
//! 0x20000  kernel command line
//! 0x9fc00  MP tables (reserved up to 1 MiB)
//! 0x100000 kernel (bzImage); an ELF vmlinux loads at its own physical address
//! ```

/// PVH start info.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// End of the PVH area.
pub const PVH_END: u64 = ZERO_PAGE_START;
/// Linux boot_params.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including the terminating NUL (x86
/// `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP tables go here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of memory above the legacy BIOS area.
pub const HIMEM_START: u64 = 0x10_0000;
