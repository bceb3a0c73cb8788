//! Dropping the program's read-only pages from this process's page tables
//! once start-up is over.
//!
//! Start-up (argument parsing, the config, the jail, ELF loading, compiling
//! seccomp filters) runs most of kiln-vmm's code once, and the kernel's
//! fault-around maps the page cache 64 KiB at a time, so each process ends
//! up with nearly all of the binary's 2-3 MiB of code and constants
//! resident though its steady state (the supervisor's wait loop, the vCPU
//! and device loops) uses a fraction of it. Zapping those mappings lets the
//! pages fault back in (from the page cache, minor faults) only where they
//! are still used. Only segments without write permission are touched: their
//! pages are never copied on write, so nothing is lost (the RELRO part of a
//! PIE is relocated, hence written, and lives in a writable segment).

use std::ffi::c_void;
use std::io;

/// The page-aligned ranges of this program's read-only loadable segments.
fn read_only_segments() -> Vec<(usize, usize)> {
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        out: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the duration of the
        // call, and `out` is the Vec handed to dl_iterate_phdr below.
        let (info, ranges) = unsafe { (&*info, &mut *(out as *mut Vec<(usize, usize)>)) };
        if info.dlpi_phdr.is_null() {
            return 1;
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let page = page_size();
        for h in headers {
            if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = info.dlpi_addr as usize + h.p_vaddr as usize;
            let end = start + h.p_memsz as usize;
            // Whole pages only: a page shared with a writable segment keeps
            // its mapping.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end > start {
                ranges.push((start, end));
            }
        }
        // The first object is the program itself; stop there.
        1
    }
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    // SAFETY: the callback only reads the headers it is given and writes to
    // `ranges`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            (&mut ranges as *mut Vec<(usize, usize)>).cast(),
        );
    }
    ranges
}

/// glibc's page size, from the auxiliary vector it kept at start. Not
/// rustix's: on first use that asks the kernel for the auxv with
/// prctl(PR_GET_AUXV), which the supervisor's seccomp filter forbids.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Drops this process's mappings of the program's code and constants so
/// that only the pages used from now on come back; returns the bytes
/// advised. Call it once start-up is over: anything that runs afterwards
/// faults its pages back in from the page cache.
pub fn release_startup_code() -> io::Result<usize> {
    let mut total = 0;
    for (start, end) in read_only_segments() {
        // SAFETY: the range is whole pages of a read-only, file-backed
        // private mapping of this program: it has no private copies to
        // lose, and its contents come back from the file on the next access.
        unsafe {
            rustix::mm::madvise(
                start as *mut c_void,
                end - start,
                rustix::mm::Advice::LinuxDontNeed,
            )?;
        }
        total += end - start;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_code_and_the_code_still_runs_after_its_release() {
        let ranges = read_only_segments();
        let here = finds_the_code_and_the_code_still_runs_after_its_release as *const () as usize;
        assert!(
            ranges.iter().any(|&(s, e)| (s..e).contains(&here)),
            "this function ({here:#x}) lies in a read-only segment: {ranges:x?}"
        );
        let released = release_startup_code().expect("madvise");
        assert!(released >= 64 * 1024, "released {released} bytes");
        // Constants and code fault back in unchanged.
        let text = format!("{:?}", (1..4).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(text, "[2, 4, 6]");
    }
}
