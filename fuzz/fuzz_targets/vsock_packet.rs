//! The virtio-vsock TX packet parser and RX buffer writer on
//! guest-controlled descriptors.
//!
//! Input: `[head: u16][guest memory image ...]`; the image (at most 64 KiB)
//! is guest RAM from address 0, with a 16-entry descriptor table at 0. The
//! chain at `head` is parsed as a TX packet; then as an RX buffer, into
//! which the parsed (or a default) header and payload are written back.
#![no_main]

use kiln_vmm::devices::virtio::vsock::packet::{read_tx, RxBuffer, VsockHeader};
use kiln_vmm::devices::virtio::vsock::{DEFAULT_GUEST_CID, MAX_PKT_PAYLOAD};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 128 * 1024;
const IMAGE_MAX: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 16;
const AVAIL: u64 = 0x1_0000;
const USED: u64 = 0x1_1000;

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

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let head = u16::from_le_bytes([data[0], data[1]]) % QUEUE_SIZE;
    let image = &data[2..data.len().min(2 + IMAGE_MAX)];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    mem.write_slice(image, GuestAddress(0)).expect("image fits");

    let mut payload = vec![0u8; MAX_PKT_PAYLOAD];
    let mut hdr = VsockHeader::default();
    let mut len = 0;
    if let Some(chain) = pop(&mem, head) {
        if let Ok(h) = read_tx(chain, &mem, &mut payload) {
            assert!(h.len as usize <= MAX_PKT_PAYLOAD);
            let _ = h.validate(DEFAULT_GUEST_CID);
            assert_eq!(VsockHeader::from_bytes(&h.to_bytes()), h);
            hdr = h;
            len = h.len as usize;
        }
    }
    if let Some(chain) = pop(&mem, head) {
        if let Ok(rx) = RxBuffer::new(chain, &mem) {
            let n = len.min(rx.payload_capacity());
            hdr.len = n as u32;
            let _ = rx.write(&hdr, &payload[..n]);
        }
    }
});
