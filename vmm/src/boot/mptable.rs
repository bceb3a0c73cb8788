//! Intel MultiProcessor Specification 1.4 tables.
//!
//! The guest kernel has no ACPI; it finds its CPUs, the IOAPIC and the ISA
//! interrupt routing from these tables (`CONFIG_X86_MPPARSE`). Layout: a
//! 16-byte floating pointer structure followed by the configuration table
//! (header, one processor entry per vCPU, the ISA bus, the IOAPIC, an I/O
//! interrupt entry per IOAPIC pin and the two local interrupt entries).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::IRQ_MAX;

/// Local APIC base address every vCPU uses.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = (1 << 9) | 1; // APIC, FPU
const BUS_ID_ISA: u8 = 0;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Most CPUs the table can describe: APIC ids are 8 bits, 0xff is broadcast
/// and the IOAPIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Errors from building MP tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// CPU count out of range.
    #[error("mp table supports 1 to {MAX_CPUS} cpus, got {0}")]
    CpuCount(u8),
    /// The table does not fit below 1 MiB.
    #[error("mp table of {0} bytes does not fit in guest low memory")]
    TooBig(usize),
    /// Guest memory write failed.
    #[error("cannot write mp table to guest memory")]
    Write,
}

/// Byte sum so that a table including its checksum byte sums to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Size of the tables for `cpus` CPUs.
pub fn size(cpus: u8) -> usize {
    let irqs = IRQ_MAX as usize + 1;
    FLOATING_LEN + HEADER_LEN + CPU_ENTRY_LEN * usize::from(cpus) + SMALL_ENTRY_LEN * (2 + irqs + 2)
}

/// Builds the floating pointer and configuration table for `cpus` CPUs, to
/// be placed at guest address `base`.
pub fn build(base: u32, cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, BSP
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[BUS_ID_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC to the BSP; LINT1: NMI to all local APICs.
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        BUS_ID_ISA,
        0,
        0,
        0,
    ]);
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        BUS_ID_ISA,
        0,
        0xff,
        1,
    ]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(FLOATING_LEN + table_len);
    // Floating pointer structure.
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(base + FLOATING_LEN as u32).to_le_bytes());
    table.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1x16, spec 1.4, checksum, features
    table[10] = checksum(&table[..FLOATING_LEN]);
    // Configuration table header.
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum
    table.extend_from_slice(b"KILN    ");
    table.extend_from_slice(b"KILN-MICROVM");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[FLOATING_LEN + 7] = checksum(&table[FLOATING_LEN..]);
    debug_assert_eq!(table.len(), size(cpus));
    Ok(table)
}

/// Writes the MP tables for `cpus` CPUs at `base`, which must leave room
/// below `limit`.
pub fn write(mem: &GuestMemoryMmap, base: u64, limit: u64, cpus: u8) -> Result<(), MptableError> {
    let base32 = u32::try_from(base).map_err(|_| MptableError::TooBig(0))?;
    let table = build(base32, cpus)?;
    if base + table.len() as u64 > limit {
        return Err(MptableError::TooBig(table.len()));
    }
    mem.write_slice(&table, GuestAddress(base))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn checksums_and_layout() {
        for cpus in [1u8, 2, 4, 32, MAX_CPUS] {
            let base = 0x9fc00;
            let t = build(base, cpus).unwrap();
            assert_eq!(t.len(), size(cpus));
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            assert_eq!(u32_at(&t, 4), base + 16);
            assert_eq!(t[8], 1);
            assert_eq!(t[9], 4);
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            assert_eq!(usize::from(u16_at(cfg, 4)), cfg.len());
            assert_eq!(sum(cfg), 0, "config table checksum");
            assert_eq!(u32_at(cfg, 36), LAPIC_ADDR);
            let count = u16_at(cfg, 34);
            assert_eq!(count, u16::from(cpus) + 2 + 24 + 2);
            // Walk the entries by type and check their order and contents.
            let mut off = HEADER_LEN;
            let mut seen = [0usize; 5];
            for _ in 0..count {
                let ty = cfg[off];
                seen[ty as usize] += 1;
                match ty {
                    ENTRY_PROCESSOR => {
                        let id = cfg[off + 1];
                        assert_eq!(cfg[off + 3] & 1, 1, "enabled");
                        assert_eq!(cfg[off + 3] & 2 != 0, id == 0, "bsp flag");
                        off += CPU_ENTRY_LEN;
                    }
                    ENTRY_IOAPIC => {
                        assert_eq!(cfg[off + 1], cpus, "ioapic id follows cpu ids");
                        assert_eq!(u32_at(cfg, off + 4), IOAPIC_ADDR);
                        off += SMALL_ENTRY_LEN;
                    }
                    ENTRY_IO_INTERRUPT => {
                        assert_eq!(cfg[off + 5], cfg[off + 7], "isa irq n -> pin n");
                        assert_eq!(cfg[off + 6], cpus);
                        off += SMALL_ENTRY_LEN;
                    }
                    _ => off += SMALL_ENTRY_LEN,
                }
            }
            assert_eq!(off, cfg.len());
            assert_eq!(seen, [usize::from(cpus), 1, 1, 24, 2]);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts_and_space() {
        assert_eq!(build(0, 0), Err(MptableError::CpuCount(0)));
        assert_eq!(build(0, 255), Err(MptableError::CpuCount(255)));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(
            write(&mem, 0x9fc00, 0x9fc00 + 100, 1),
            Err(MptableError::TooBig(size(1)))
        );
        write(&mem, 0x9fc00, 0x10_0000, 32).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(0x9fc00)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
