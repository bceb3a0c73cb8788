//! Loading hostile, truncated or oversized images into guest memory (no
//! /dev/kvm needed).

#![allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::*;
use kiln_vmm::boot::{self, BootError, BootProtocol, BootSpec};
use kiln_vmm::hypervisor::EntryMode;
use kiln_vmm::memory::{self, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};

fn mem(mib: u64) -> GuestMemoryMmap {
    memory::create(mib << 20, false).unwrap().0
}

fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initramfs: Option<&Path>,
) -> Result<boot::BootInfo, BootError> {
    boot::load(
        mem,
        &BootSpec {
            kernel,
            initramfs,
            cmdline: "reboot=k",
            vcpus: 2,
        },
    )
}

#[test]
fn missing_and_unrecognised_kernels() {
    let dir = temp_dir("bad-kernels");
    let m = mem(64);
    let err = load(&m, &dir.join("nope"), None).unwrap_err();
    assert!(matches!(err, BootError::KernelOpen { .. }), "{err}");
    assert!(err.to_string().contains("nope"));
    for (name, bytes) in [
        ("empty", vec![]),
        ("text", b"hello world".to_vec()),
        ("zeros", vec![0; 4096]),
    ] {
        let k = write_file(&dir, name, &bytes);
        let err = load(&m, &k, None).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat(_)), "{name}: {err}");
    }
}

#[test]
fn truncated_and_corrupt_elf() {
    let dir = temp_dir("bad-elf");
    let m = mem(64);
    let good = elf_kernel(&pvh_check_guest(), true, 0);
    for len in [4, 63, 64 + 56, 0x200, 0x1010] {
        let k = write_file(&dir, "trunc", &good[..len]);
        let err = load(&m, &k, None).unwrap_err();
        assert!(
            matches!(err, BootError::KernelLoad { .. }),
            "len {len}: {err}"
        );
    }
    let mut bad = good.clone();
    bad[54] = 12; // e_phentsize
    let err = load(&m, &write_file(&dir, "phentsize", &bad), None).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
    let mut bad = good;
    bad[64 + 24..64 + 32].copy_from_slice(&u64::MAX.to_le_bytes()); // p_paddr overflows
    let err = load(&m, &write_file(&dir, "paddr", &bad), None).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
}

#[test]
fn hostile_bzimage_headers() {
    let dir = temp_dir("bad-bzimage");
    let m = mem(64);
    let good = bzimage_kernel(&long_mode_check_guest());
    // Header cut short right after the magic.
    let err = load(&m, &write_file(&dir, "short", &good[..0x210]), None).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
    // Setup sectors beyond the end of the file.
    let mut bad = good.clone();
    bad[0x1f1] = 0xff;
    let err = load(&m, &write_file(&dir, "setup", &bad), None).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
    // Old boot protocol / not loaded high.
    let mut bad = good.clone();
    bad[0x211] = 0;
    let err = load(&m, &write_file(&dir, "low", &bad), None).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
    // init_size beyond RAM.
    let mut bad = good;
    bad[0x260..0x264].copy_from_slice(&0xffff_0000u32.to_le_bytes());
    let err = load(&m, &write_file(&dir, "init-size", &bad), None).unwrap_err();
    assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
}

#[test]
fn kernel_bigger_than_memory() {
    let dir = temp_dir("big-kernel");
    let k = write_file(&dir, "vmlinux", &elf_kernel(&CRASH, true, 128 << 20));
    let err = load(&mem(64), &k, None).unwrap_err();
    assert!(matches!(err, BootError::KernelTooBig { .. }), "{err}");
    assert!(err.to_string().contains("more memory"), "{err}");
    load(&mem(256), &k, None).unwrap();
}

#[test]
fn initramfs_placement_and_limits() {
    let dir = temp_dir("initramfs");
    let k = write_file(&dir, "vmlinux", &elf_kernel(&pvh_check_guest(), true, 0));
    let initrd = write_file(&dir, "initrd", &[0x5a; 10_000]);
    let m = mem(64);
    let info = load(&m, &k, Some(&initrd)).unwrap();
    assert_eq!(info.protocol, BootProtocol::Pvh);
    assert!(matches!(info.entry.mode, EntryMode::Protected32));
    let (addr, size) = info.initramfs.unwrap();
    assert_eq!(size, 10_000);
    assert_eq!(addr % 4096, 0);
    assert!(addr + size <= 64 << 20 && addr >= info.kernel_end);
    let mut byte = [0u8];
    m.read_slice(&mut byte, GuestAddress(addr + size - 1))
        .unwrap();
    assert_eq!(byte, [0x5a]);
    // The PVH module list points at it.
    let modlist: u64 = m.read_obj(GuestAddress(info.entry.rbx + 16)).unwrap();
    let paddr: u64 = m.read_obj(GuestAddress(modlist)).unwrap();
    assert_eq!(paddr, addr);

    // bzImage: below initrd_addr_max too.
    let bz = write_file(&dir, "bzImage", &bzimage_kernel(&long_mode_check_guest()));
    let info = load(&m, &bz, Some(&initrd)).unwrap();
    assert_eq!(info.protocol, BootProtocol::Linux64);
    let image: u32 = m.read_obj(GuestAddress(info.entry.rsi + 0x218)).unwrap();
    assert_eq!(u64::from(image), info.initramfs.unwrap().0);

    // Too big for RAM.
    let huge = dir.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let err = load(&m, &k, Some(&huge)).unwrap_err();
    assert!(matches!(err, BootError::InitramfsTooBig { .. }), "{err}");
    let err = load(&m, &k, Some(&dir.join("missing"))).unwrap_err();
    assert!(matches!(err, BootError::InitramfsOpen { .. }), "{err}");
}

#[test]
fn kernel_and_initramfs_spanning_pages_land_byte_for_byte() {
    // Larger than a page, ending mid-page, so the PVH kernel's segment and
    // the initramfs are partly mapped from their files and partly copied,
    // over guest RAM on small pages and on huge pages alike.
    for huge_pages in [false, true] {
        lands_byte_for_byte(huge_pages);
    }
}

fn lands_byte_for_byte(huge_pages: bool) {
    let dir = temp_dir("mapped");
    let mut code = pvh_check_guest();
    code.extend((0..3 * 4096 + 77).map(|i| (i % 251) as u8));
    let memsz = code.len() as u64 + 8192;
    let k = write_file(&dir, "vmlinux", &elf_kernel(&code, true, memsz));
    let initrd_bytes: Vec<u8> = (0..2 * 4096 + 123).map(|i| (i % 241) as u8).collect();
    let initrd = write_file(&dir, "initrd", &initrd_bytes);
    let m = memory::create(64 << 20, huge_pages).unwrap().0;
    let info = load(&m, &k, Some(&initrd)).unwrap();
    assert_eq!(info.protocol, BootProtocol::Pvh);
    assert_eq!(info.entry.rip, LOAD_ADDR, "the entry from the PVH note");
    let mut got = vec![0u8; code.len()];
    m.read_slice(&mut got, GuestAddress(LOAD_ADDR)).unwrap();
    assert!(got == code, "the kernel segment differs in guest memory");
    // The zero-filled tail (memsz beyond the file's bytes) stays zero.
    let mut tail = vec![0xffu8; 8192];
    m.read_slice(&mut tail, GuestAddress(LOAD_ADDR + code.len() as u64))
        .unwrap();
    assert!(
        tail.iter().all(|&b| b == 0),
        "the segment's tail is not zero"
    );
    let (addr, size) = info.initramfs.unwrap();
    let mut got = vec![0u8; size as usize];
    m.read_slice(&mut got, GuestAddress(addr)).unwrap();
    assert!(got == initrd_bytes, "the initramfs differs in guest memory");
}

#[test]
fn mp_table_is_written_for_the_vcpus() {
    let dir = temp_dir("mptable");
    let k = write_file(&dir, "vmlinux", &elf_kernel(&CRASH, true, 0));
    let m = mem(64);
    load(&m, &k, None).unwrap();
    let mut sig = [0u8; 4];
    m.read_slice(&mut sig, GuestAddress(0x9fc00)).unwrap();
    assert_eq!(&sig, b"_MP_");
}
