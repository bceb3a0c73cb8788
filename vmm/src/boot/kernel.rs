//! Recognising and loading the guest kernel image with linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::HIMEM_START;
use super::{elf_map, BootError};

/// Offset of the bzImage setup header in the file.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the "HdrS" magic.
const HDRS_OFFSET: usize = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The 64-bit entry point of a bzImage sits this far into the loaded kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// The kind of kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF (`vmlinux`).
    Elf,
    /// Compressed bzImage.
    BzImage,
}

/// How the loaded kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// PVH: 32-bit protected mode at this address, `rbx` = start_info.
    Pvh(u64),
    /// Linux 64-bit boot protocol at this address, `rsi` = zero page.
    Linux64(u64),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How to enter it.
    pub entry: KernelEntry,
    /// First guest address past the kernel (including what it needs to
    /// decompress or zero at boot).
    pub end: u64,
    /// The bzImage setup header, when the image has one.
    pub setup_header: Option<setup_header>,
}

/// Tells the image format from the first bytes of the file.
pub fn detect(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(ELF_MAGIC) {
        Some(KernelFormat::Elf)
    } else if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS_MAGIC) {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

fn read_head(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(0x400);
    file.by_ref().take(0x400).read_to_end(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(head)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Highest physical address (exclusive) the ELF's loadable segments occupy,
/// including their zero-filled tails; `None` for a malformed header.
pub fn elf_extent(file: &mut File) -> std::io::Result<Option<u64>> {
    let mut ehdr = [0u8; 64];
    if file.read_exact(&mut ehdr).is_err() {
        return Ok(None);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(&ehdr, 0x20),
        u16_at(&ehdr, 0x36),
        u16_at(&ehdr, 0x38),
    ) else {
        return Ok(None);
    };
    if phentsize < 56 || phnum > 512 {
        return Ok(None);
    }
    let mut end = 0u64;
    let mut phdr = vec![0u8; usize::from(phentsize)];
    for i in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(
            phoff.saturating_add(i * u64::from(phentsize)),
        ))?;
        if file.read_exact(&mut phdr).is_err() {
            return Ok(None);
        }
        let p_type = u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]);
        let (Some(paddr), Some(memsz)) = (u64_at(&phdr, 0x18), u64_at(&phdr, 0x28)) else {
            return Ok(None);
        };
        if p_type == 1 {
            match paddr.checked_add(memsz) {
                Some(e) => end = end.max(e),
                None => return Ok(None),
            }
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(Some(end))
}

/// Loads the kernel at `path` into `mem`, whose RAM below the MMIO gap ends
/// at `ram_end`.
/// A PVH vmlinux's segments are mapped (see file_map.rs); other kernels
/// are copied by linux-loader.
pub fn load(mem: &GuestMemoryMmap, path: &Path, ram_end: u64) -> Result<LoadedKernel, BootError> {
    let open_err = |source| BootError::KernelOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let head = read_head(&mut file).map_err(open_err)?;
    let format = detect(&head).ok_or_else(|| BootError::KernelFormat(path.to_owned()))?;
    let load_err = |source| BootError::KernelLoad {
        path: path.to_owned(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let extent = elf_extent(&mut file).map_err(open_err)?.ok_or_else(|| {
                load_err(loader::Error::Elf(loader::elf::Error::ReadProgramHeader))
            })?;
            if extent > ram_end {
                return Err(BootError::KernelTooBig {
                    needs: extent,
                    have: ram_end,
                });
            }
            if let Some((entry, loads)) = elf_map::plan(&file)
                .filter(|(_, loads)| loads.iter().all(|p| p.p_paddr >= HIMEM_START))
            {
                let mapped = elf_map::place(mem, &mut file, &loads).map_err(|source| {
                    BootError::KernelMap {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                tracing::debug!(
                    "kernel: {mapped} bytes mapped from {}, the rest copied",
                    path.display()
                );
                return Ok(LoadedKernel {
                    entry: KernelEntry::Pvh(entry),
                    end: extent,
                    setup_header: None,
                });
            }
            file.seek(SeekFrom::Start(0)).map_err(open_err)?;
            let result = loader::Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.0),
                _ => KernelEntry::Linux64(result.kernel_load.0),
            };
            Ok(LoadedKernel {
                entry,
                end: result.kernel_end.max(extent),
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            if head.len() < SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>() {
                return Err(load_err(loader::Error::Bzimage(
                    loader::bzimage::Error::ReadBzImageHeader,
                )));
            }
            let file_len = file.metadata().map_err(open_err)?.len();
            if HIMEM_START.saturating_add(file_len) > ram_end {
                return Err(BootError::KernelTooBig {
                    needs: HIMEM_START.saturating_add(file_len),
                    have: ram_end,
                });
            }
            let result =
                loader::BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                    .map_err(load_err)?;
            let hdr = result.setup_header.ok_or_else(|| {
                load_err(loader::Error::Bzimage(
                    loader::bzimage::Error::InvalidBzImage,
                ))
            })?;
            // The decompressor needs init_size bytes from the load address.
            let needs = result.kernel_load.0
                + u64::from(hdr.init_size).max(result.kernel_end - result.kernel_load.0);
            if needs > ram_end {
                return Err(BootError::KernelTooBig {
                    needs,
                    have: ram_end,
                });
            }
            Ok(LoadedKernel {
                entry: KernelEntry::Linux64(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: needs,
                setup_header: Some(hdr),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[HDRS_OFFSET..HDRS_OFFSET + 4].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect(&bz[..0x204]), None, "truncated magic");
        assert_eq!(detect(b""), None);
        assert_eq!(detect(&[0u8; 0x400]), None);
    }
}
