//! Guest RAM: anonymous, lazily-populated mappings split around the MMIO gap.
//!
//! Regions are mapped `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` and
//! never touched by the VMM before the guest touches them (apart from what
//! the boot code writes), so an idle VM costs only the pages its guest has
//! used.
//!
//! Each region starts on a 2 MiB boundary in host memory, as its guest
//! address does, and asks for transparent huge pages (`MADV_HUGEPAGE`, as
//! QEMU and Cloud Hypervisor do): a guest's first touch of a 2 MiB range
//! is then one host fault and one 2 MiB nested mapping instead of 512 of
//! each. KVM maps a slot with huge pages only where guest and host
//! addresses agree modulo 2 MiB, hence the alignment (Linux before 6.7
//! places large anonymous mappings on any page).

use std::sync::OnceLock;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

pub use vm_memory::GuestMemoryMmap;

use crate::hypervisor::{HypervisorError, Vm};
use crate::layout::{HIGH_RAM_START, MMIO_START};

/// Errors from setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not page-aligned.
    #[error("invalid guest memory size {0:#x}")]
    InvalidSize(u64),
    /// The host refused the mapping.
    #[error("cannot map {size:#x} bytes of guest memory: {source}")]
    Mmap {
        /// Requested size in bytes.
        size: u64,
        /// Underlying error.
        #[source]
        source: rustix::io::Errno,
    },
    /// vm-memory refused the regions (overlapping or out of range).
    #[error("guest memory layout: {0}")]
    Layout(String),
    /// The hypervisor refused to map a region.
    #[error("cannot register guest memory with the hypervisor: {0}")]
    Register(#[source] HypervisorError),
}

/// The guest-physical RAM ranges for `size` bytes of RAM: below the MMIO gap,
/// then above 4 GiB for the rest.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > MMIO_START {
        ranges.push((GuestAddress(HIGH_RAM_START), size - MMIO_START));
    }
    ranges
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_START)
        .map(|r| r.start_addr().raw_value() + r.len())
        .max()
        .unwrap_or(0)
}

/// A huge page, and the alignment of every guest RAM region in host memory.
pub const HUGE_PAGE: usize = 2 << 20;

/// What backs guest RAM on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Transparent huge pages where the host can find them (it may still
    /// fall back to small pages under fragmentation).
    HugePages,
    /// 4 KiB pages: huge pages were not asked for, or the host's
    /// transparent huge pages are off.
    SmallPages,
}

/// The host's transparent huge page mode, read once: true when `enabled`
/// is `always` or `madvise`.
static HOST_THP: OnceLock<bool> = OnceLock::new();

/// Whether the host gives transparent huge pages to a `MADV_HUGEPAGE`
/// mapping. Read from sysfs on the first call, so call it before the jail
/// hides `/sys` (kiln-vmm's `main` does); `false` when it cannot be read.
pub fn host_has_huge_pages() -> bool {
    *HOST_THP
        .get_or_init(|| host_thp_mode().is_some_and(|mode| mode == "always" || mode == "madvise"))
}

/// The host's transparent huge page mode (`always`, `madvise` or `never`),
/// when sysfs shows it.
pub fn host_thp_mode() -> Option<String> {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|modes| selected_mode(&modes).map(str::to_owned))
}

/// The selected word of a sysfs list such as `always [madvise] never`.
fn selected_mode(modes: &str) -> Option<&str> {
    let start = modes.find('[')? + 1;
    let len = modes[start..].find(']')?;
    Some(&modes[start..start + len])
}

/// Maps `size` bytes of guest RAM (no pages are touched), with huge pages
/// when `huge_pages` is set and the host has them.
///
/// The mappings stay for the life of the process: vm-memory does not own
/// them (it cannot map at an aligned address itself), and kiln-vmm runs
/// one VM whose RAM is needed until it exits.
pub fn create(size: u64, huge_pages: bool) -> Result<(GuestMemoryMmap, Backing), MemoryError> {
    if size == 0 || !size.is_multiple_of(4096) || usize::try_from(size).is_err() {
        return Err(MemoryError::InvalidSize(size));
    }
    let mut backing = if huge_pages && host_has_huge_pages() {
        Backing::HugePages
    } else {
        Backing::SmallPages
    };
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let len = len as usize;
        let host = map_aligned(len).map_err(|source| MemoryError::Mmap { size, source })?;
        if backing == Backing::HugePages {
            // SAFETY: `host..host + len` is the anonymous mapping made just
            // above; the advice changes no contents.
            let advised =
                unsafe { rustix::mm::madvise(host.cast(), len, rustix::mm::Advice::LinuxHugepage) };
            if let Err(e) = advised {
                tracing::debug!("guest RAM stays on small pages: MADV_HUGEPAGE: {e}");
                backing = Backing::SmallPages;
            }
        }
        // SAFETY: `host` is a live, page-aligned mapping of `len` bytes made
        // above, readable and writable, which is never unmapped (see the
        // function's doc), so it outlives the region.
        let mapping = unsafe {
            MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                .with_raw_mmap_pointer(host)
        }
        .build()
        .map_err(|e| MemoryError::Layout(e.to_string()))?;
        let region: GuestRegionMmap = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| MemoryError::Layout(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))?;
    Ok((mem, backing))
}

/// An anonymous read-write mapping of `len` bytes starting on a
/// [`HUGE_PAGE`] boundary: `len` plus one huge page mapped, the ends
/// trimmed.
fn map_aligned(len: usize) -> Result<*mut u8, rustix::io::Errno> {
    let span = len.checked_add(HUGE_PAGE).ok_or(rustix::io::Errno::NOMEM)?;
    // SAFETY: a fresh anonymous mapping at an address the kernel picks;
    // no existing memory is affected.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            span,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
        )?
    }
    .cast::<u8>();
    let head = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
    let tail = span - head - len;
    // SAFETY: both ranges lie inside the mapping made above and nothing
    // refers to them; what stays is `len` bytes from the aligned start.
    unsafe {
        if head > 0 {
            rustix::mm::munmap(base.cast(), head)?;
        }
        if tail > 0 {
            rustix::mm::munmap(base.add(head + len).cast(), tail)?;
        }
        Ok(base.add(head))
    }
}

/// Registers every region of `mem` with the VM, one slot per region.
///
/// # Safety
/// `mem` must outlive every use of `vm` that can reach guest memory (keep it
/// alive until the VM and its vCPUs are dropped).
pub unsafe fn register(vm: &dyn Vm, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        // SAFETY: the region is a live mapping owned by `mem`, which the caller
        // keeps alive for as long as the VM can access it.
        unsafe {
            vm.map_memory(
                slot as u32,
                region.start_addr().raw_value(),
                region.len(),
                host,
            )
        }
        .map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_gap() {
        assert_eq!(ram_ranges(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
        assert_eq!(ram_ranges(MMIO_START), vec![(GuestAddress(0), MMIO_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (GuestAddress(0), MMIO_START),
                (GuestAddress(HIGH_RAM_START), (4 << 30) - MMIO_START)
            ]
        );
    }

    #[test]
    fn create_large_memory_is_lazy_and_split() {
        // 8 GiB of NORESERVE mappings costs nothing until touched.
        let (mem, _) = create(8 << 30, false).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(low_ram_end(&mem), MMIO_START);
        assert!(mem.address_in_range(GuestAddress(HIGH_RAM_START + (5 << 30) - 1)));
        assert!(!mem.address_in_range(GuestAddress(HIGH_RAM_START + (5 << 30))));
        assert!(!mem.address_in_range(GuestAddress(MMIO_START)));
        assert!(matches!(create(0, false), Err(MemoryError::InvalidSize(0))));
        assert!(matches!(
            create(4097, true),
            Err(MemoryError::InvalidSize(4097))
        ));
    }

    #[test]
    fn regions_start_on_huge_page_boundaries_and_hold_data() {
        for huge in [false, true] {
            let (mem, backing) = create(6 << 30, huge).unwrap();
            assert_eq!(backing == Backing::HugePages, huge && host_has_huge_pages());
            for region in mem.iter() {
                assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
            }
            use vm_memory::Bytes;
            let last = GuestAddress(HIGH_RAM_START + (2 << 30) - 8);
            mem.write_obj(0x1234_5678_u64, last).unwrap();
            assert_eq!(mem.read_obj::<u64>(last).unwrap(), 0x1234_5678);
        }
    }

    #[test]
    fn thp_modes() {
        assert_eq!(selected_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(selected_mode("[always] madvise never\n"), Some("always"));
        assert_eq!(selected_mode("always madvise [never]\n"), Some("never"));
        assert_eq!(selected_mode("always madvise never"), None);
        assert_eq!(selected_mode("[always"), None);
    }
}
