//! Placing the initramfs high in low RAM, where the kernel will not
//! overwrite it while it unpacks itself.

use std::fs::File;
use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::file_map;
use super::BootError;

const PAGE: u64 = 4096;

/// Where an initramfs of `size` bytes goes: page-aligned, as high as possible
/// below `limit` (the lower of RAM end and the kernel's `initrd_addr_max`),
/// above `kernel_end`.
pub fn place(size: u64, kernel_end: u64, limit: u64) -> Result<u64, BootError> {
    let too_big = || BootError::InitramfsTooBig {
        size,
        available: limit.saturating_sub(kernel_end.next_multiple_of(PAGE)),
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE - 1);
    if addr < kernel_end {
        return Err(too_big());
    }
    Ok(addr)
}

/// Loads the initramfs at `path` (mapped, not copied: see file_map.rs) between
/// `kernel_end` and `limit`; returns its guest address and size.
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    (kernel_end, limit): (u64, u64),
) -> Result<(u64, u64), BootError> {
    let open_err = |source| BootError::InitramfsOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let addr = place(size, kernel_end, limit)?;
    file_map::place(mem, &mut file, (0, addr, size)).map_err(|source| {
        BootError::InitramfsRead {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok((addr, size))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn placement() {
        assert_eq!(place(0x1000, 0x100_0000, 0x400_0000).unwrap(), 0x3ff_f000);
        assert_eq!(place(0x1001, 0x100_0000, 0x400_0000).unwrap(), 0x3ff_e000);
        // Exactly fits above the kernel.
        assert_eq!(
            place(0x300_0000, 0x100_0000, 0x400_0000).unwrap(),
            0x100_0000
        );
        assert!(matches!(
            place(0x300_0001, 0x100_0000, 0x400_0000),
            Err(BootError::InitramfsTooBig { .. })
        ));
        assert!(matches!(
            place(u64::MAX, 0, 0x400_0000),
            Err(BootError::InitramfsTooBig { .. })
        ));
    }
}
