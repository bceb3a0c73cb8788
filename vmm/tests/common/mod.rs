//! Tiny hand-assembled guests and the kernel images that carry them.
//!
//! The guests run at CPL0 for a few dozen instructions, so they also run on
//! hosts whose /dev/kvm emulates guest kernel mode slowly.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_vmm::builder;
use kiln_vmm::config::VmConfig;
use kiln_vmm::vm::exit::ExitReason;
use kiln_vmm::vm::MicroVm;

/// Where test kernels are loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// How long a tiny guest may take, even on an emulating /dev/kvm.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `mov edi, 0xd0000000; mov byte [rdi], 124; mov al, 0xfe; out 0x64, al`:
/// announce the shutdown on the boot timer, then keyboard-controller reset
/// (a clean exit). The same bytes work in 32-bit and 64-bit mode.
pub const RESET: [u8; 12] = [
    0xbf, 0x00, 0x00, 0x00, 0xd0, 0xc6, 0x07, 124, 0xb0, 0xfe, 0xe6, 0x64,
];
/// `mov al, 0xfe; out 0x64, al` without announcing: a guest that resets on
/// its own, as a panicking kernel with `panic=-1` does.
pub const UNANNOUNCED_RESET: [u8; 4] = [0xb0, 0xfe, 0xe6, 0x64];
/// `ud2` with no IDT: #UD -> #GP -> #DF -> triple fault.
pub const CRASH: [u8; 2] = [0x0f, 0x0b];
/// `jmp $`.
pub const SPIN: [u8; 2] = [0xeb, 0xfe];

/// 32-bit PVH guest: checks `ebx` = start_info at 0x6000 with the PVH magic
/// and a command line starting "rebo", writes 123 to the boot timer, then
/// resets. Any failed check crashes the guest.
pub fn pvh_check_guest() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0x81, 0xfb, 0x00, 0x60, 0x00, 0x00]); // 0: cmp ebx, 0x6000
    let r = RESET.len() as u8 - 4; // jumps over RESET grow with it
    c.extend([0x75, 0x1e + r]); // 6: jne fail
    c.extend([0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33]); // 8: cmp dword [ebx], 0x336ec578
    c.extend([0x75, 0x16 + r]); // 14: jne fail
    c.extend([0x8b, 0x43, 0x18]); // 16: mov eax, [ebx + 24] (cmdline_paddr)
    c.extend([0x81, 0x38, b'r', b'e', b'b', b'o']); // 19: cmp dword [eax], "rebo"
    c.extend([0x75, 0x0b + r]); // 25: jne fail
    c.extend([0xc6, 0x05, 0x00, 0x00, 0x00, 0xd0, 123]); // 27: mov byte [0xd0000000], 123
    c.extend(RESET); // 34
    c.extend(CRASH); // 34 + RESET.len(): fail
    assert_eq!(c.len(), 36 + RESET.len());
    c
}

/// 64-bit guest (Linux boot protocol): checks `rsi` = zero page at 0x7000
/// with "HdrS" at 0x202, then resets.
pub fn long_mode_check_guest() -> Vec<u8> {
    // The boot page tables map only the first GiB: the boot timer at
    // 0xd0000000 is out of reach, so reset without announcing (tests run
    // these guests with the boot timer off, where a reset counts as clean).
    let mut c = Vec::new();
    c.extend([0x81, 0xfe, 0x00, 0x70, 0x00, 0x00]); // 0: cmp esi, 0x7000
    c.extend([0x75, 0x10]); // 6: jne fail (24)
    c.extend([0x81, 0xbe, 0x02, 0x02, 0x00, 0x00, b'H', b'd', b'r', b'S']); // 8: cmp dword [rsi+0x202], "HdrS"
    c.extend([0x75, 0x04]); // 18: jne fail
    c.extend(UNANNOUNCED_RESET); // 20
    c.extend(CRASH); // 24: fail
    c
}

/// Writes "hi\n" to COM1, then resets.
pub fn serial_guest() -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"hi\n" {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend(RESET);
    c
}

/// Reads unbacked MMIO and an unbacked port, expects all ones, then resets.
pub fn unbacked_read_guest() -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0xa1, 0x00, 0x00, 0x80, 0xd0]); // 0: mov eax, [0xd0800000]
    c.extend([0x83, 0xf8, 0xff]); // 5: cmp eax, -1
    let r = RESET.len() as u8 - 4;
    c.extend([0x75, 0x0a + r]); // 8: jne fail
    c.extend([0xe4, 0x80]); // 10: in al, 0x80
    c.extend([0x3c, 0xff]); // 12: cmp al, 0xff
    c.extend([0x75, 0x04 + r]); // 14: jne fail
    c.extend(RESET); // 16
    c.extend(CRASH); // 20: fail
    c
}

fn put(buf: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    if buf.len() < off + bytes.len() {
        buf.resize(off + bytes.len(), 0);
    }
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// An ELF64 executable whose one PT_LOAD puts `code` at [`LOAD_ADDR`]
/// (`memsz` bytes in memory), with a PVH entry note when `pvh`.
pub fn elf_kernel(code: &[u8], pvh: bool, memsz: u64) -> Vec<u8> {
    const CODE_OFF: u64 = 0x1000;
    const NOTE_OFF: u64 = 0x200;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let mut f = Vec::new();
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &0x3eu16.to_le_bytes()); // x86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD_ADDR.to_le_bytes()); // e_entry
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut f, 56, &phnum.to_le_bytes());
    let mut phdr = |i: usize, p_type: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        let base = 64 + 56 * i;
        put(&mut f, base, &p_type.to_le_bytes());
        put(&mut f, base + 4, &5u32.to_le_bytes());
        put(&mut f, base + 8, &off.to_le_bytes());
        put(&mut f, base + 16, &addr.to_le_bytes());
        put(&mut f, base + 24, &addr.to_le_bytes());
        put(&mut f, base + 32, &filesz.to_le_bytes());
        put(&mut f, base + 40, &memsz.to_le_bytes());
        put(&mut f, base + 48, &4u64.to_le_bytes());
    };
    phdr(
        0,
        1,
        CODE_OFF,
        LOAD_ADDR,
        code.len() as u64,
        memsz.max(code.len() as u64),
    );
    if pvh {
        phdr(1, 4, NOTE_OFF, 0, 20, 20);
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes()); // namesz
        note.extend(4u32.to_le_bytes()); // descsz
        note.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend(b"Xen\0");
        note.extend((LOAD_ADDR as u32).to_le_bytes());
        put(&mut f, NOTE_OFF as usize, &note);
    }
    put(&mut f, CODE_OFF as usize, code);
    f
}

/// A minimal bzImage: one setup sector, then a "compressed kernel" whose
/// 64-bit entry (offset 0x200) is `code64`.
pub fn bzimage_kernel(code64: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &0x020fu16.to_le_bytes()); // protocol 2.15
    f[0x211] = 1; // LOADED_HIGH
    put(&mut f, 0x214, &(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    put(&mut f, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut f, 0x260, &0x1_0000u32.to_le_bytes()); // init_size
    put(&mut f, 1024 + 0x200, code64);
    f
}

/// A fresh directory for one test's files, removed when dropped.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a fresh [`TempDir`] named after the test.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("kiln-vmm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    TempDir(dir)
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

/// A 64 MiB, one-vCPU config for `kernel`.
pub fn config(kernel: &Path) -> VmConfig {
    let mut c = VmConfig::new(kernel);
    c.mem_mib = 64;
    c
}

/// Starts the VM; fails the test with a clear reason when the host has no
/// usable /dev/kvm (these tests must never pass without running a guest).
pub fn start(config: &VmConfig) -> MicroVm {
    if !Path::new("/dev/kvm").exists() {
        panic!("this test runs a guest and needs /dev/kvm, which this host lacks");
    }
    match builder::start(config) {
        Ok(vm) => vm,
        Err(e) => panic!("cannot start test vm (needs a working /dev/kvm): {e}"),
    }
}

/// Waits for the guest to exit, failing the test after [`GUEST_TIMEOUT`].
pub fn wait(vm: &MicroVm) -> ExitReason {
    match vm.wait_timeout(GUEST_TIMEOUT) {
        Some(reason) => reason,
        None => {
            vm.shutdown();
            panic!("guest did not exit within {GUEST_TIMEOUT:?}");
        }
    }
}
