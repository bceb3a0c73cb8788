//! virtio-blk device state: one request queue, the config space, the disk.

use std::path::Path;

use vm_memory::Bytes;

use super::request;
use super::{
    BlkError, Disk, BOUNCE_SIZE, MAX_BYTES_PER_TURN, QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use crate::devices::virtio::{
    read_config_bytes, warn_limited, ActivateContext, ActivateError, DeviceState, Served,
    VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};

/// Bytes of `struct virtio_blk_config` kiln fills: capacity, size_max, seg_max.
const CONFIG_SIZE: usize = 16;

/// A virtio block device.
pub struct Blk {
    disk: Disk,
    config: [u8; CONFIG_SIZE],
    pub(super) state: DeviceState,
    /// The driver did not negotiate FLUSH: every write is made durable.
    write_through: bool,
    bounce: Box<[u8; BOUNCE_SIZE]>,
}

impl Blk {
    /// Opens `path` (see [`Disk::open`]) and makes an inactive device of it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlkError> {
        Blk::new(Disk::open(path, read_only)?)
    }

    /// A new, inactive device over `disk`.
    pub fn new(disk: Disk) -> Result<Self, BlkError> {
        let mut config = [0u8; CONFIG_SIZE];
        config[..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let bounce = vec![0u8; BOUNCE_SIZE]
            .into_boxed_slice()
            .try_into()
            .expect("the vector has BOUNCE_SIZE bytes");
        Ok(Blk {
            disk,
            config,
            state: DeviceState::new("virtio-blk", 1).map_err(BlkError::EventFd)?,
            write_through: false,
            bounce,
        })
    }

    /// The disk behind the device.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Serves available requests: at most one queue's worth and about
    /// [`MAX_BYTES_PER_TURN`] bytes per call; if more may be waiting the
    /// queue eventfd is signalled again so the event loop comes back after
    /// the other devices had a turn.
    pub(super) fn process_queue(&mut self) {
        let (disk, bounce, write_through) = (&self.disk, &mut self.bounce, self.write_through);
        let mut bytes = 0u64;
        let _ = self.state.drain(0, |chain, mem| {
            let len = match request::parse(chain, mem, disk.sectors()) {
                Ok(req) => {
                    bytes += req.data_len;
                    let (status, written) = match req.execute(mem, disk, bounce, write_through) {
                        Ok(n) => (super::status::OK, n),
                        Err(e) => {
                            warn_limited!("virtio-blk: {e}");
                            (e.status(), 0)
                        }
                    };
                    match mem.write_obj(status, req.status) {
                        Ok(()) => written.saturating_add(1),
                        Err(_) => 0,
                    }
                }
                Err(refused) => {
                    warn_limited!("virtio-blk: bad request: {}", refused.error);
                    match refused.status {
                        Some(addr) if mem.write_obj(refused.error.status(), addr).is_ok() => 1,
                        _ => 0,
                    }
                }
            };
            if bytes >= MAX_BYTES_PER_TURN {
                Served::UsedThenYield(len)
            } else {
                Served::Used(len)
            }
        });
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_FLUSH;
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        warn_limited!("virtio-blk: guest wrote read-only config space");
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let write_through = ctx.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        self.state.activate(ctx)?;
        self.write_through = write_through;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::super::disk::tests::temp_file;
    use super::super::{req_type, status, ID_BYTES};
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};
    use crate::devices::virtio::{Interrupt, INT_CONFIG, INT_VRING};

    const HDRS: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn active_blk(
        mem: &GuestMemoryMmap,
        tq: &TestQueue,
        name: &str,
        sectors: usize,
        read_only: bool,
    ) -> (Blk, Arc<Interrupt>) {
        let mut blk = Blk::open(&temp_file(name, sectors * 512), read_only).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        blk.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![tq.queue()],
            interrupt: irq.clone(),
            acked_features: blk.avail_features(),
        })
        .unwrap();
        (blk, irq)
    }

    /// Writes header `n` (at HDRS + 16n) and returns its address.
    fn header(mem: &GuestMemoryMmap, n: u64, t: u32, sector: u64) -> u64 {
        let addr = HDRS + 16 * n;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).unwrap();
        addr
    }

    fn status_at(mem: &GuestMemoryMmap, n: u64) -> u8 {
        mem.read_obj(GuestAddress(STATUS + n)).unwrap()
    }

    #[test]
    fn config_space_and_features() {
        let blk = Blk::open(&temp_file("cfg.img", 8 * 512 + 7), true).unwrap();
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg = [0u8; 4];
        blk.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        let f = blk.avail_features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_eq!(blk.device_type(), TYPE_BLOCK);
        let rw = Blk::open(&temp_file("cfg-rw.img", 512), false).unwrap();
        assert_eq!(rw.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn write_read_back_flush_and_get_id() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        let (mut blk, irq) = active_blk(&mem, &tq, "e2e.img", 64, false);
        mem.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
        let h = header(&mem, 0, req_type::OUT, 10);
        let w = tq.add_chain(
            &mem,
            &[(h, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
        );
        let h = header(&mem, 1, req_type::FLUSH, 0);
        let f = tq.add_chain(&mem, &[(h, 16, false), (STATUS + 1, 1, true)]);
        let h = header(&mem, 2, req_type::IN, 9);
        let r = tq.add_chain(
            &mem,
            &[
                (h, 16, false),
                (DATA + 0x1000, 1536, true),
                (STATUS + 2, 1, true),
            ],
        );
        let h = header(&mem, 3, req_type::GET_ID, 0);
        let g = tq.add_chain(
            &mem,
            &[
                (h, 16, false),
                (DATA + 0x2000, 20, true),
                (STATUS + 3, 1, true),
            ],
        );
        mem.write_slice(&[0xff; 4], GuestAddress(STATUS)).unwrap();
        blk.process_queue();
        assert_eq!(tq.take_used(&mem), vec![(w, 1), (f, 1), (r, 1537), (g, 21)]);
        for n in 0..4 {
            assert_eq!(status_at(&mem, n), status::OK, "request {n}");
        }
        assert_eq!(irq.status(), INT_VRING);
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        let pattern: Vec<u8> = (9 * 512..10 * 512).map(|i| (i % 251) as u8).collect();
        assert_eq!(&got[..512], &pattern[..]);
        assert!(got[512..].iter().all(|&b| b == 0x5a));
        let mut id = [0u8; ID_BYTES];
        mem.read_slice(&mut id, GuestAddress(DATA + 0x2000))
            .unwrap();
        assert_eq!(&id, blk.disk().id());
    }

    #[test]
    fn hostile_chains_get_error_status_or_nothing() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        let (mut blk, _irq) = active_blk(&mem, &tq, "hostile.img", 8, true);
        mem.write_slice(&[0xee; 8], GuestAddress(STATUS)).unwrap();
        mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        // Write to a read-only disk.
        let h = header(&mem, 0, req_type::OUT, 0);
        let a = tq.add_chain(
            &mem,
            &[(h, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        // Sector past the end.
        let h = header(&mem, 1, req_type::IN, 8);
        let b = tq.add_chain(
            &mem,
            &[(h, 16, false), (DATA, 512, true), (STATUS + 1, 1, true)],
        );
        // Truncated header.
        let h = header(&mem, 2, req_type::IN, 0);
        let c = tq.add_chain(&mem, &[(h, 8, false), (STATUS + 2, 1, true)]);
        // Unknown type.
        let h = header(&mem, 3, 99, 0);
        let d = tq.add_chain(&mem, &[(h, 16, false), (STATUS + 3, 1, true)]);
        // Read-only status descriptor: nothing is written, used length 0.
        let h = header(&mem, 4, req_type::IN, 0);
        let e = tq.add_chain(
            &mem,
            &[(h, 16, false), (DATA, 512, true), (STATUS + 4, 1, false)],
        );
        // Status outside guest memory.
        let h = header(&mem, 5, req_type::IN, 0);
        let f = tq.add_chain(&mem, &[(h, 16, false), (0x1_0000_0000, 1, true)]);
        blk.process_queue();
        assert_eq!(
            tq.take_used(&mem),
            vec![(a, 1), (b, 1), (c, 1), (d, 1), (e, 0), (f, 0)]
        );
        assert_eq!(status_at(&mem, 0), status::IOERR);
        assert_eq!(status_at(&mem, 1), status::IOERR);
        assert_eq!(status_at(&mem, 2), status::IOERR);
        assert_eq!(status_at(&mem, 3), status::UNSUPP);
        assert_eq!(status_at(&mem, 4), 0xee);
        // The refused IN with a read-only status read nothing into DATA.
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data.iter().all(|&x| x == 0x77));
        // The disk is unchanged.
        let mut sector = [0u8; 512];
        blk.disk().read_at(&mut sector, 0).unwrap();
        assert_eq!(sector[1], 1);
    }

    #[test]
    fn work_per_turn_is_bounded() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 32);
        let sectors = MAX_BYTES_PER_TURN as usize / 512;
        let (mut blk, _irq) = active_blk(&mem, &tq, "budget.img", sectors, true);
        // 3 reads of half the budget each (4 MiB buffers at 4 MiB).
        let per = (MAX_BYTES_PER_TURN / 2) as u32;
        for n in 0..3 {
            let h = header(&mem, n, req_type::IN, 0);
            tq.add_chain(
                &mem,
                &[(h, 16, false), (0x40_0000, per, true), (STATUS, 1, true)],
            );
        }
        let _ = blk.queue_events()[0].read();
        blk.process_queue();
        assert_eq!(tq.take_used(&mem).len(), 2);
        // The device asked the event loop to come back.
        assert_eq!(blk.queue_events()[0].read().unwrap(), 1);
        blk.process_queue();
        assert_eq!(tq.take_used(&mem).len(), 1);
    }

    #[test]
    fn hostile_avail_index_marks_needs_reset_and_activation_rules() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 0x1000, 16);
        let (mut blk, irq) = active_blk(&mem, &tq, "reset.img", 8, true);
        tq.set_avail_idx(&mem, 1000);
        blk.process_queue();
        assert!(irq.needs_reset());
        assert_ne!(irq.status() & INT_CONFIG, 0);
        let ctx = |queues| ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt: irq.clone(),
            acked_features: 1 << VIRTIO_F_VERSION_1,
        };
        assert_eq!(
            blk.activate(ctx(vec![tq.queue()])),
            Err(ActivateError::AlreadyActive)
        );
        blk.reset();
        assert!(!blk.state.is_active());
        blk.process_queue(); // inactive: no-op
        assert_eq!(
            blk.activate(ctx(vec![])),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        );
        // FLUSH not negotiated: writes are made durable one by one.
        blk.activate(ctx(vec![tq.queue()])).unwrap();
        assert!(blk.write_through);
    }
}
