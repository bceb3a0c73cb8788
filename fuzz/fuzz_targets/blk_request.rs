//! virtio-blk request parser and executor on guest-controlled descriptors.
//!
//! Input: `[head: u16][disk sectors: u64][guest memory image ...]`. The
//! image (at most 64 KiB) is guest RAM from address 0; the descriptor table
//! of a 16-entry queue sits at 0, so the descriptors are fuzz data too. The
//! harness publishes `head` on the available ring, pops the chain and runs
//! the parser against the fuzzed disk size (overflow paths), then against a
//! real 64-sector file, executing what parses. Invariants of an accepted
//! request are asserted.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_vmm::devices::virtio::blk::request::{self, Request, RequestType};
use kiln_vmm::devices::virtio::blk::{Disk, BOUNCE_SIZE, SECTOR_SIZE};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM_SIZE: usize = 128 * 1024;
const IMAGE_MAX: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 16;
const AVAIL: u64 = 0x1_0000;
const USED: u64 = 0x1_1000;
const DISK_SECTORS: u64 = 64;

fn disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = PathBuf::from(format!("/tmp/kiln-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; (DISK_SECTORS * SECTOR_SIZE) as usize]).expect("disk file");
        Disk::open(&path, false).expect("open disk")
    })
}

fn pop(
    mem: &GuestMemoryMmap,
    head: u16,
) -> Option<virtio_queue::DescriptorChain<&GuestMemoryMmap>> {
    mem.write_obj(0u16, GuestAddress(AVAIL)).ok()?;
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).ok()?;
    mem.write_obj(head, GuestAddress(AVAIL + 4)).ok()?;
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.try_set_desc_table_address(GuestAddress(0)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).ok()?;
    q.try_set_used_ring_address(GuestAddress(USED)).ok()?;
    q.set_ready(true);
    q.pop_descriptor_chain(mem)
}

fn check(req: &Request, mem: &GuestMemoryMmap, sectors: u64) {
    assert!(GuestMemoryBackend::check_range(mem, req.status, 1));
    let mut total = 0u64;
    for seg in &req.segments {
        assert!(seg.len > 0);
        assert!(GuestMemoryBackend::check_range(
            mem,
            seg.addr,
            seg.len as usize
        ));
        total += u64::from(seg.len);
    }
    assert_eq!(total, req.data_len);
    if matches!(req.kind, RequestType::In | RequestType::Out) {
        let end = req.sector * SECTOR_SIZE + req.data_len;
        assert!(end <= sectors.saturating_mul(SECTOR_SIZE));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let head = u16::from_le_bytes([data[0], data[1]]) % QUEUE_SIZE;
    let sectors = u64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    let image = &data[10..data.len().min(10 + IMAGE_MAX)];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    mem.write_slice(image, GuestAddress(0)).expect("image fits");

    if let Some(chain) = pop(&mem, head) {
        if let Ok(req) = request::parse(chain, &mem, sectors) {
            check(&req, &mem, sectors);
        }
    }
    let disk = disk();
    if let Some(chain) = pop(&mem, head) {
        if let Ok(req) = request::parse(chain, &mem, disk.sectors()) {
            check(&req, &mem, disk.sectors());
            let mut bounce = vec![0u8; BOUNCE_SIZE];
            let bounce: &mut [u8; BOUNCE_SIZE] = bounce.as_mut_slice().try_into().expect("size");
            let _ = req.execute(&mem, disk, bounce, false);
        }
    }
});
