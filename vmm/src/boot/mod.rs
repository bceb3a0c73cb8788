//! Loading a Linux guest: kernel (PVH ELF or bzImage), command line,
//! initramfs, memory map and MP tables, and the vCPU 0 entry state.

pub mod cmdline;
pub mod elf_map;
pub mod file_map;
pub mod initrd;
pub mod kernel;
pub mod layout;
pub mod linux64;
pub mod memmap;
pub mod mptable;
pub mod pvh;

use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use crate::hypervisor::{EntryMode, EntryState};
use crate::memory::low_ram_end;
use kernel::KernelEntry;
use layout::{BOOT_STACK_POINTER, CMDLINE_START, EBDA_START, HIMEM_START};

/// Errors from loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    KernelOpen {
        /// Kernel path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PVH kernel's segments could not be mapped into guest memory.
    #[error("cannot map kernel {path} into guest memory: {source}")]
    KernelMap {
        /// Kernel path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: file_map::FileMapError,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(PathBuf),
    /// linux-loader rejected the kernel (corrupt or truncated image).
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        /// Kernel path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Guest RAM is too small for the kernel.
    #[error("kernel needs memory up to {needs:#x} but guest RAM below the MMIO gap ends at {have:#x}; give the VM more memory")]
    KernelTooBig {
        /// End address the kernel needs.
        needs: u64,
        /// End of RAM.
        have: u64,
    },
    /// The initramfs file could not be opened.
    #[error("cannot read initramfs {path}: {source}")]
    InitramfsOpen {
        /// Initramfs path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs could not be placed in guest memory.
    #[error("cannot place initramfs {path} in guest memory: {source}")]
    InitramfsRead {
        /// Initramfs path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: file_map::FileMapError,
    },
    /// The initramfs does not fit between the kernel and the end of RAM.
    #[error("initramfs of {size} bytes does not fit in the {available} bytes of guest RAM above the kernel; give the VM more memory")]
    InitramfsTooBig {
        /// Initramfs size.
        size: u64,
        /// Room available.
        available: u64,
    },
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The MP tables could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Too many memory map entries.
    #[error("memory map has too many entries ({0})")]
    MemoryMapTooLarge(usize),
    /// A boot structure could not be written to guest memory.
    #[error("cannot write {0} to guest memory")]
    GuestWrite(&'static str),
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSpec<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Optional initramfs.
    pub initramfs: Option<&'a Path>,
    /// Full kernel command line (see [`cmdline::build`]).
    pub cmdline: &'a str,
    /// Number of vCPUs (for the MP tables).
    pub vcpus: u8,
}

/// Which boot protocol the kernel is entered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH (32-bit entry, `hvm_start_info`).
    Pvh,
    /// Linux 64-bit boot protocol (zero page, long mode).
    Linux64,
}

/// The result of loading: how to start vCPU 0.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Register state for vCPU 0.
    pub entry: EntryState,
    /// Protocol in use.
    pub protocol: BootProtocol,
    /// End of the kernel in guest memory.
    pub kernel_end: u64,
    /// Initramfs (address, size), if any.
    pub initramfs: Option<(u64, u64)>,
}

/// Loads everything the guest needs into `mem`.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<BootInfo, BootError> {
    let ram_end = low_ram_end(mem);
    let kernel = kernel::load(mem, spec.kernel, ram_end)?;
    let kernel_end = kernel.end.max(HIMEM_START);

    let initrd_limit = match (kernel.entry, kernel.setup_header) {
        (KernelEntry::Linux64(_), Some(hdr)) if hdr.initrd_addr_max != 0 => {
            u64::from(hdr.initrd_addr_max) + 1
        }
        (KernelEntry::Linux64(_), _) => linux64::DEFAULT_INITRD_ADDR_MAX + 1,
        (KernelEntry::Pvh(_), _) => ram_end,
    }
    .min(ram_end);
    let initramfs = spec
        .initramfs
        .map(|path| initrd::load(mem, path, (kernel_end, initrd_limit)))
        .transpose()?;

    cmdline::write(mem, CMDLINE_START, spec.cmdline)?;
    mptable::write(mem, EBDA_START, HIMEM_START, spec.vcpus)?;
    let map = memmap::build(mem);

    let (protocol, entry) = match kernel.entry {
        KernelEntry::Pvh(rip) => {
            let start_info = pvh::write(mem, CMDLINE_START, initramfs, &map)?;
            let entry = EntryState {
                mode: EntryMode::Protected32,
                rip,
                rsp: BOOT_STACK_POINTER,
                rbx: start_info,
                rsi: 0,
            };
            (BootProtocol::Pvh, entry)
        }
        KernelEntry::Linux64(rip) => {
            let params = linux64::zero_page(
                kernel.setup_header,
                (CMDLINE_START, spec.cmdline.len() + 1),
                initramfs,
                &map,
            )?;
            let (zero_page, pml4) = linux64::write(mem, params)?;
            let entry = EntryState {
                mode: EntryMode::Long64 { pml4 },
                rip,
                rsp: BOOT_STACK_POINTER,
                rbx: 0,
                rsi: zero_page,
            };
            (BootProtocol::Linux64, entry)
        }
    };
    Ok(BootInfo {
        entry,
        protocol,
        kernel_end,
        initramfs,
    })
}
