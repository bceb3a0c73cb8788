//! Reading a split virtqueue safely: popping chains a hostile driver wrote,
//! and describing a queue for debug dumps.

use std::num::Wrapping;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// A queue the guest corrupted: the device stops using it until reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("virtio queue is corrupted")]
pub struct QueueBroken;

/// Pops the next available chain without letting a hostile driver make the
/// queue library log or loop: the available index and the head index are
/// checked first.
pub(crate) fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'a GuestMemoryMmap>>, QueueBroken> {
    let avail = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(|_| QueueBroken)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending == 0 {
        return Ok(None);
    }
    if pending > queue.size() {
        return Err(QueueBroken);
    }
    let chain = queue.pop_descriptor_chain(mem).ok_or(QueueBroken)?;
    if chain.head_index() >= queue.size() {
        return Err(QueueBroken);
    }
    Ok(Some(chain))
}

/// One queue as both sides see it, for debug dumps: the device's own
/// positions (`next_avail`, `next_used`) against the indexes and flags the
/// driver and device last wrote in guest memory.
pub(crate) fn describe_queue(queue: &Queue, mem: &GuestMemoryMmap) -> String {
    use vm_memory::{Bytes, GuestAddress};
    let read = |addr: u64| -> String {
        mem.read_obj::<u16>(GuestAddress(addr))
            .map_or_else(|_| "?".into(), |v| v.to_string())
    };
    let size = u64::from(queue.size());
    let (avail, used) = (queue.avail_ring(), queue.used_ring());
    let mut s = format!(
        "size {} next_avail {} avail.idx {} avail.flags {} next_used {} used.idx {} used.flags {}",
        queue.size(),
        queue.next_avail(),
        read(avail + 2),
        read(avail),
        queue.next_used(),
        read(used + 2),
        read(used),
    );
    if queue.event_idx_enabled() {
        s.push_str(&format!(
            " used_event {} avail_event {}",
            read(avail + 4 + 2 * size),
            read(used + 4 + 8 * size)
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;

    #[test]
    fn pop_chain_rejects_hostile_avail_index() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 8);
        let mut q = tq.queue();
        assert!(matches!(pop_chain(&mut q, &mem), Ok(None)));
        tq.add_chain(&mem, &[(0x10_0000, 16, false)]);
        assert!(matches!(pop_chain(&mut q, &mem), Ok(Some(_))));
        // The driver claims 200 new entries in an 8-entry ring.
        tq.set_avail_idx(&mem, 201);
        assert_eq!(pop_chain(&mut q, &mem).err(), Some(QueueBroken));
    }

    #[test]
    fn pop_chain_rejects_out_of_range_head() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 0x1000, 8);
        let mut q = tq.queue();
        tq.publish(&mem, 9);
        assert_eq!(pop_chain(&mut q, &mem).err(), Some(QueueBroken));
    }
}
