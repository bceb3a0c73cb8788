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
//! On guest RAM backed by huge pages the contents are copied instead
//! ([`Placement`]): a mapped file is 4 KiB pages, each a nested page fault
//! when the guest first touches it, while a copy fills a few huge pages the
//! guest then reaches with one fault each.

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

/// How file contents get into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Whole pages mapped from the file, shared with other VMs until
    /// written (guest RAM on small pages).
    Map,
    /// Copied into guest RAM (guest RAM on huge pages).
    Copy,
}

/// Whether `len` bytes of a file at `offset` can go to `gpa` with whole
/// pages mapped (the two agree within a page).
pub fn mappable(offset: u64, gpa: u64) -> bool {
    offset % PAGE == gpa % PAGE
}

/// Places `len` bytes of `file` from `offset` at guest address `gpa`: with
/// [`Placement::Map`] the whole pages mapped copy-on-write and partial
/// pages at either end copied, with [`Placement::Copy`] all copied.
/// Returns the bytes mapped (the rest were copied).
pub fn place(
    mem: &GuestMemoryMmap,
    file: &mut File,
    (offset, gpa, len): (u64, u64, u64),
    how: Placement,
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
    if how == Placement::Copy {
        copy_in_words(mem, file, (offset, gpa, len))?;
        return Ok(0);
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

/// Copies `len` bytes of `file` at `offset` to `gpa` from a read-only
/// mapping of the file, in aligned 8-byte stores. Neither `read(2)` nor
/// memcpy: both move large ranges with `rep movsb`, which a CPU emulator
/// (the TCG testbed) runs a byte per step; for a kernel's 17 MB that was
/// 200-800 ms there. On hardware the word loop is a few ms, as they are.
fn copy_in_words(
    mem: &GuestMemoryMmap,
    file: &File,
    (offset, gpa, len): (u64, u64, u64),
) -> Result<(), FileMapError> {
    let slice = guest_range(mem, gpa, len)?;
    let count = slice.len();
    let page_start = offset / PAGE * PAGE;
    let lead = (offset - page_start) as usize;
    let map_len = lead + count;
    // SAFETY: a new read-only private mapping of the file at an address
    // the kernel picks; no existing memory is affected.
    let source = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            map_len,
            rustix::mm::ProtFlags::READ,
            // Populated in one call rather than a fault per 64 KiB.
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::POPULATE,
            file.as_fd(),
            page_start,
        )
    }
    .map_err(|source| FileMapError::Map { gpa, source })?
    .cast::<u8>();
    // SAFETY: `source + lead` has `count` readable bytes, all inside the
    // file (the caller checked its size); the destination is `count` bytes
    // of one guest memory region, which outlives this call and which no
    // vCPU runs on yet; the two do not overlap.
    unsafe {
        copy_volatile_words(slice.ptr_guard_mut().as_ptr(), source.add(lead), count);
        // The mapping is this function's own; nothing refers to it now.
        let _ = rustix::mm::munmap(source.cast(), map_len);
    }
    Ok(())
}

/// Copies `len` bytes from `src` to `dst` with volatile stores, 8 bytes at
/// a time where `dst` is aligned (volatile, so the compiler cannot turn the
/// loop back into memcpy).
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, not
/// overlapping; `src` and `dst` must agree modulo 8.
unsafe fn copy_volatile_words(dst: *mut u8, src: *const u8, len: usize) {
    const WORD: usize = std::mem::size_of::<u64>();
    let head = dst.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    // SAFETY: every access below lies in the first `len` bytes of `src` and
    // `dst` (the caller's promise); after `head` bytes both are 8-aligned.
    unsafe {
        for i in 0..head {
            dst.add(i).write_volatile(src.add(i).read());
        }
        let (wdst, wsrc) = (dst.add(head).cast::<u64>(), src.add(head).cast::<u64>());
        for i in 0..words {
            wdst.add(i).write_volatile(wsrc.add(i).read());
        }
        for i in head + words * WORD..len {
            dst.add(i).write_volatile(src.add(i).read());
        }
    }
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
        let mapped = place(&mem, &mut file, (0x1234, 0x5234, 8 * 4096), Placement::Map).unwrap();
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
            place(&mem, &mut file, (0, 0x2000, 4 * 4096), Placement::Map).unwrap(),
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
    fn a_copy_does_not_follow_the_file() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, data) = file_of(5 * 4096);
        let mut file = f.reopen().unwrap();
        // Starting and ending off a word boundary: bytes, words, bytes.
        let len = 3 * 4096 + 5;
        let range = (0x1003, 0x2003, len as u64);
        assert_eq!(place(&mem, &mut file, range, Placement::Copy).unwrap(), 0);
        // A mapped page would show this write to the file; a copy does not.
        std::fs::write(f.path(), vec![0x55; 5 * 4096]).unwrap();
        assert_eq!(guest(&mem, 0x2003, len), data[0x1003..0x1003 + len]);
        assert!(guest(&mem, 0x2000, 3).iter().all(|&b| b == 0));
        assert!(guest(&mem, 0x2003 + len as u64, 100)
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn a_range_past_the_end_of_the_file_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, _) = file_of(4096 + 10);
        let mut file = f.reopen().unwrap();
        assert!(matches!(
            place(&mem, &mut file, (0, 0, 4096 + 20), Placement::Map),
            Err(FileMapError::PastEnd { size: 4106, .. })
        ));
    }

    #[test]
    fn misaligned_and_outside_ranges_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 12)]).unwrap();
        let (f, _) = file_of(8 * 4096);
        let mut file = f.reopen().unwrap();
        assert!(matches!(
            place(&mem, &mut file, (1, 0x2000, 4096), Placement::Map),
            Err(FileMapError::Misaligned { .. })
        ));
        assert!(matches!(
            place(&mem, &mut file, (0, 15 << 12, 2 * 4096), Placement::Map),
            Err(FileMapError::OutsideMemory { .. })
        ));
        assert!(!mappable(0x1000, 0x2001));
        assert!(mappable(0x1001, 0x2001));
    }
}
