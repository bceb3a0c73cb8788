//! A PVH vmlinux placed in guest memory by mapping its loadable segments
//! from the file (see `file_map.rs`) rather than copying them, as
//! linux-loader does: a cold boot then reads and allocates nothing for
//! the kernel before the guest runs, and VMs booting the same kernel
//! share the pages they do not write. linux-loader stays the loader for
//! everything else (bzImage, ELF kernels without a PVH entry).

use std::fs::File;

use elf::abi::{PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::note::Note;
use elf::ElfStream;
use vm_memory::GuestMemoryMmap;

use super::file_map::{self, FileMapError};

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h): the PVH
/// 32-bit entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;
/// The owner name of Xen's notes.
const XEN_NOTE_NAME: &[u8] = b"Xen";

/// The loadable segments and PVH entry of an ELF kernel, when it has a PVH
/// entry and every segment can be mapped page for page; `None` otherwise
/// (not little-endian x86-64, no PVH note, a misaligned, malformed or
/// truncated segment), and linux-loader loads it instead (or says what is
/// wrong with it).
pub fn plan(file: &File) -> Option<(u64, Vec<elf::segment::ProgramHeader>)> {
    let size = file.metadata().ok()?.len();
    let mut elf = ElfStream::<LittleEndian, _>::open_stream(file).ok()?;
    if elf.ehdr.e_machine != elf::abi::EM_X86_64 || elf.ehdr.class != elf::file::Class::ELF64 {
        return None;
    }
    let segments: Vec<_> = elf.segments().to_vec();
    let loads: Vec<_> = segments
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .copied()
        .collect();
    let sound = |p: &elf::segment::ProgramHeader| {
        p.p_filesz <= p.p_memsz
            && file_map::mappable(p.p_offset, p.p_paddr)
            && p.p_offset
                .checked_add(p.p_filesz)
                .is_some_and(|end| end <= size)
            && p.p_paddr.checked_add(p.p_memsz).is_some()
    };
    if loads.is_empty() || !loads.iter().all(sound) {
        return None;
    }
    let mut entry = None;
    for note_segment in segments.iter().filter(|p| p.p_type == PT_NOTE) {
        let Ok(notes) = elf.segment_data_as_notes(note_segment) else {
            continue;
        };
        for note in notes {
            if let Note::Unknown(any) = note {
                if any.n_type == XEN_ELFNOTE_PHYS32_ENTRY
                    && any.name.strip_suffix(b"\0").unwrap_or(any.name) == XEN_NOTE_NAME
                {
                    entry = pvh_entry(any.desc);
                }
            }
        }
    }
    Some((entry?, loads))
}

/// The entry address in a `PHYS32_ENTRY` note: 4 or 8 bytes (Linux
/// writes a pointer-sized value), little-endian.
fn pvh_entry(desc: &[u8]) -> Option<u64> {
    match desc.len() {
        4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
        8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
        _ => None,
    }
}

/// Places the segments `plan` returned: file contents mapped or copied,
/// zero-filled tails left as they are (fresh guest memory is zero).
/// Returns the bytes mapped (the rest of the segments was copied).
pub fn place(
    mem: &GuestMemoryMmap,
    file: &mut File,
    loads: &[elf::segment::ProgramHeader],
) -> Result<u64, FileMapError> {
    let mut mapped = 0;
    for p in loads {
        mapped += file_map::place(mem, file, (p.p_offset, p.p_paddr, p.p_filesz))?;
    }
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_reads_both_widths() {
        assert_eq!(pvh_entry(&0x0100_0abcu32.to_le_bytes()), Some(0x0100_0abc));
        assert_eq!(pvh_entry(&0x0100_0abcu64.to_le_bytes()), Some(0x0100_0abc));
        assert_eq!(pvh_entry(&[1, 2, 3]), None);
    }

    #[test]
    fn a_file_that_is_not_elf_has_no_plan() {
        let f = std::fs::File::open("/proc/self/cmdline").expect("open");
        assert!(plan(&f).is_none());
    }
}
