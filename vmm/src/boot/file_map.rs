//! File contents placed in guest memory by mapping instead of copying:
//! the whole pages of a file range are mapped over the guest's anonymous
//! memory `MAP_PRIVATE | MAP_FIXED`, so nothing is read or allocated at
//! load time, the guest faults pages in from the page cache as it touches
//! them, every VM booting the same file shares the pages it only reads,
//! and a page the guest writes is copied for that guest alone. Partial
//! pages at either end are copied. Meant for fresh guest memory at boot
//! (the kernel and initramfs): the files must not be changed in place
//! while a VM maps them (kiln's artifacts are written once, then renamed).
//!
//! On guest RAM backed by huge pages this still wins over a copy: the
//! mapped ranges are 4 KiB pages (a nested page fault each when first
//! touched) inside otherwise huge-page RAM, but a copy must first fault in
//! and zero every huge page it fills and then move the bytes, which cost
//! more at boot than the small pages saved (measured in the testbed:
//! spawn -> agent ready 0.85-0.87x of the copy's, `benches/RESULTS.md`).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;

use vm_memory::bitmap::BS;
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Page size of the mappings.
pub const PAGE: u64 = 4096;

/// Why file contents could not be placed in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum FileMapError {
    /// The guest range is not inside one memory region.
    #[error("guest range {gpa:#x}+{len:#x} is not in one memory region")]
    OutsideMemory {
        /// First guest address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The file offset and guest address differ within a page, so whole
    /// pages cannot be mapped.
    #[error(
        "file offset {offset:#x} and guest address {gpa:#x} are not congruent modulo the page size"
    )]
    Misaligned {
        /// File offset.
        offset: u64,
        /// Guest address.
        gpa: u64,
    },
    /// mmap refused.
    #[error("mapping the file at guest address {gpa:#x}: {source}")]
    Map {
        /// Guest address.
        gpa: u64,
        /// Underlying error.
        #[source]
        source: rustix::io::Errno,
    },
    /// The range runs past the end of the file (a truncated or malformed
    /// image); mapped pages there would fault when touched.
    #[error("file range {offset:#x}+{len:#x} runs past the end of the {size}-byte file")]
    PastEnd {
        /// File offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// File size.
        size: u64,
    },
    /// The file's size could not be read.
    #[error("reading the file's size: {0}")]
    Metadata(#[source] std::io::Error),
    /// Reading a partial page failed (short file, I/O error).
    #[error("reading {len} bytes at file offset {offset:#x}: {source}")]
    Read {
        /// File offset.
        offset: u64,
        /// Bytes wanted.
        len: u64,
        /// Underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Whether `len` bytes of a file at `offset` can go to `gpa` with whole
/// pages mapped (the two agree within a page).
pub fn mappable(offset: u64, gpa: u64) -> bool {
    offset % PAGE == gpa % PAGE
}

/// Places `len` bytes of `file` from `offset` at guest address `gpa`: the
/// whole pages mapped copy-on-write, partial pages at either end copied.
/// Returns the bytes mapped (the rest were copied).
pub fn place(
    mem: &GuestMemoryMmap,
    file: &mut File,
    (offset, gpa, len): (u64, u64, u64),
) -> Result<u64, FileMapError> {
    if len == 0 {
        return Ok(0);
    }
    if !mappable(offset, gpa) {
        return Err(FileMapError::Misaligned { offset, gpa });
    }
    let size = file.metadata().map_err(FileMapError::Metadata)?.len();
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(FileMapError::PastEnd { offset, len, size });
    }
    let end = gpa
        .checked_add(len)
        .ok_or(FileMapError::OutsideMemory { gpa, len })?;
    let first_page = gpa.next_multiple_of(PAGE).min(end);
    let last_page = (end / PAGE * PAGE).max(first_page);
    copy(mem, file, offset, gpa, first_page - gpa)?;
    map_pages(
        mem,
        file,
        offset + (first_page - gpa),
        first_page,
        last_page - first_page,
    )?;
    copy(
        mem,
        file,
        offset + (last_page - gpa),
        last_page,
        end - last_page,
    )?;
    Ok(last_page - first_page)
}

/// Copies `len` bytes of `file` at `offset` to `gpa`.
fn copy(
    mem: &GuestMemoryMmap,
    file: &mut File,
    offset: u64,
    gpa: u64,
    len: u64,
) -> Result<(), FileMapError> {
    if len == 0 {
        return Ok(());
    }
    let read_err = |source| FileMapError::Read {
        offset,
        len,
        source,
    };
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| read_err(vm_memory::GuestMemoryError::IOError(e)))?;
    let count = usize::try_from(len).map_err(|_| FileMapError::OutsideMemory { gpa, len })?;
    mem.read_exact_volatile_from(GuestAddress(gpa), file, count)
        .map_err(read_err)
}

/// The `len` bytes of guest memory at `gpa`, when they lie in one region.
fn guest_range(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
) -> Result<VolatileSlice<'_, BS<'_, ()>>, FileMapError> {
    let outside = || FileMapError::OutsideMemory { gpa, len };
    let count = usize::try_from(len).map_err(|_| outside())?;
    mem.get_slice(GuestAddress(gpa), count)
        .map_err(|_| outside())
}

/// Maps `len` bytes (whole pages) of `file` at `offset` over guest memory
/// at `gpa`.
fn map_pages(
    mem: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    gpa: u64,
    len: u64,
) -> Result<(), FileMapError> {
    if len == 0 {
        return Ok(());
    }
    let slice = guest_range(mem, gpa, len)?;
    let host = slice.ptr_guard_mut().as_ptr();
    // SAFETY: `host..host + len` lies inside one guest memory region,
    // which this process mapped and keeps mapped for the VM's life; no
    // Rust reference points into guest memory (it is accessed through
    // volatile slices). MAP_FIXED replaces those pages with the same
    // protection and a private file mapping of the same length, so the
    // region stays one valid mapping, and the guest has not run yet.
    unsafe {
        rustix::mm::mmap(
            host.cast(),
            slice.len(),
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE
                | rustix::mm::MapFlags::FIXED
                | rustix::mm::MapFlags::NORESERVE,
            file.as_fd(),
            offset,
        )
    }
    .map_err(|source| FileMapError::Map { gpa, source })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::io::Write;

    use vm_memory::Bytes;

    use super::*;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    fn guest(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }

    #[test]
    fn unaligned_ranges_map_whole_pages_and_copy_the_ends() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 12)]).unwrap();
        let (f, data) = file_of(10 * 4096 + 123);
        let mut file = f.reopen().unwrap();
        // From file offset 0x1234 to guest 0x5234: 2 partial pages, 7 whole.
        let mapped = place(&mem, &mut file, (0x1234, 0x5234, 8 * 4096)).unwrap();
        assert_eq!(mapped, 7 * 4096);
        assert_eq!(
            guest(&mem, 0x5234, 8 * 4096),
            data[0x1234..0x1234 + 8 * 4096]
        );
        // Around it, memory is still zero.
        assert!(guest(&mem, 0x5000, 0x234).iter().all(|&b| b == 0));
        assert!(guest(&mem, 0x5234 + 8 * 4096, 4096).iter().all(|&b| b == 0));
    }

    #[test]
    fn guest_writes_stay_in_the_guest() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, data) = file_of(4 * 4096);
        let mut file = f.reopen().unwrap();
        assert_eq!(
            place(&mem, &mut file, (0, 0x2000, 4 * 4096)).unwrap(),
            4 * 4096
        );
        mem.write_slice(&[0xAA; 16], GuestAddress(0x2000)).unwrap();
        assert_eq!(guest(&mem, 0x2000, 16), vec![0xAA; 16]);
        assert_eq!(
            std::fs::read(f.path()).unwrap(),
            data,
            "the file is unchanged"
        );
    }

    #[test]
    fn a_range_past_the_end_of_the_file_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, _) = file_of(4096 + 10);
        let mut file = f.reopen().unwrap();
        assert!(matches!(
            place(&mem, &mut file, (0, 0, 4096 + 20)),
            Err(FileMapError::PastEnd { size: 4106, .. })
        ));
    }

    #[test]
    fn misaligned_and_outside_ranges_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, _) = file_of(8 * 4096);
        let mut file = f.reopen().unwrap();
        assert!(matches!(
            place(&mem, &mut file, (1, 0x2000, 4096)),
            Err(FileMapError::Misaligned { .. })
        ));
        assert!(matches!(
            place(&mem, &mut file, (0, 15 << 12, 2 * 4096)),
            Err(FileMapError::OutsideMemory { .. })
        ));
        assert!(!mappable(0x1000, 0x2001));
        assert!(mappable(0x1001, 0x2001));
    }
}
