//! Guest memory as a raw file: every RAM region at its recorded offset, so
//! a restore maps it straight from the file.
//!
//! Writing skips all-zero pages (the file keeps holes there), so pages the
//! guest never used cost neither disk nor time. A restore maps the file
//! `MAP_PRIVATE`: nothing is read until the guest touches a page, clones
//! of one snapshot share its page cache, and a guest write copies only
//! the page it writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::SnapshotError;
use crate::memory::GuestMemoryMmap;

const PAGE: usize = 4096;

/// Where one guest RAM region lives in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// The file size `regions` need.
pub fn file_len(regions: &[MemoryRegion]) -> u64 {
    regions
        .iter()
        .map(|r| r.file_offset + r.len)
        .max()
        .unwrap_or(0)
}

/// Replaces the contents of `file` (the memory file at `path`) with every
/// region of `mem`; the vCPUs and devices must be paused. Returns the
/// layout and the bytes written (non-zero pages).
pub fn write(
    mem: &GuestMemoryMmap,
    file: &File,
    path: &Path,
) -> Result<(Vec<MemoryRegion>, u64), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    // Emptied first: the zero pages skipped below must read as zero.
    file.set_len(0).map_err(io)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let len_usize = usize::try_from(len).map_err(|_| SnapshotError::Corrupt("region size"))?;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`, which outlives this borrow; the vCPUs and the device
        // loop are paused, so nothing writes it while it is read here.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len_usize) };
        let mut page = 0;
        while page < len_usize {
            // A run of non-zero pages, written in one call.
            if is_zero(&bytes[page..(page + PAGE).min(len_usize)]) {
                page += PAGE;
                continue;
            }
            let start = page;
            while page < len_usize && !is_zero(&bytes[page..(page + PAGE).min(len_usize)]) {
                page += PAGE;
            }
            let end = page.min(len_usize);
            file.write_all_at(&bytes[start..end], offset + start as u64)
                .map_err(io)?;
            written += (end - start) as u64;
        }
        regions.push(MemoryRegion {
            guest_addr: region.start_addr().0,
            len,
            file_offset: offset,
        });
        offset += len;
    }
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((regions, written))
}

fn is_zero(page: &[u8]) -> bool {
    // Compares in u64 words: this loop runs over all of guest RAM.
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only
        // reinterprets the aligned middle of the slice.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Maps the memory file at `path` copy-on-write as guest RAM laid out as
/// `regions`. Refuses a file whose size does not match the layout.
pub fn map(path: &Path, regions: &[MemoryRegion]) -> Result<GuestMemoryMmap, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let file = Arc::new(File::open(path).map_err(io)?);
    let found = file.metadata().map_err(io)?.len();
    let expected = file_len(regions);
    if found != expected {
        return Err(SnapshotError::MemorySize { found, expected });
    }
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let len = usize::try_from(r.len).map_err(|_| SnapshotError::Corrupt("region size"))?;
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::from_arc(Arc::clone(&file), r.file_offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| SnapshotError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or(SnapshotError::Corrupt("memory region out of range"))?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| SnapshotError::Map(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn memory_round_trips_sparse_and_copy_on_write() {
        let dir = std::env::temp_dir().join(format!("kiln-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.mem");
        let (mem, _) = crate::memory::create(64 << 20, false).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x55_u8, GuestAddress((64 << 20) - 1))
            .unwrap();
        let file = File::create(&path).unwrap();
        let (regions, written) = write(&mem, &file, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two touched pages");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);

        let restored = map(&path, &regions).unwrap();
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress((64 << 20) - 1))
                .unwrap(),
            0x55
        );
        // A clone's write stays private to it.
        restored.write_obj(1u32, GuestAddress(0x1000)).unwrap();
        let other = map(&path, &regions).unwrap();
        assert_eq!(
            other.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );

        // A memory file of the wrong size is refused.
        let mut bigger = regions.clone();
        bigger[0].len += 4096;
        assert!(matches!(
            map(&path, &bigger),
            Err(SnapshotError::MemorySize { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
