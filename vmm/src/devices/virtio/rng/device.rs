//! virtio-rng device state: one queue of device-writable buffers.

use std::io::Write;

use vm_memory::GuestMemoryMmap;

use super::{RngError, MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::devices::virtio::{
    warn_limited, DeviceState, Served, VirtioDevice, VirtioError, TYPE_RNG, VIRTIO_F_VERSION_1,
};

/// A virtio entropy device.
pub struct Rng {
    pub(super) state: DeviceState,
    buf: Vec<u8>,
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self, VirtioError> {
        Ok(Rng {
            state: DeviceState::new("virtio-rng", 1).map_err(VirtioError::EventFd)?,
            buf: vec![0; MAX_REQUEST_BYTES],
        })
    }

    /// Serves the available requests (at most one queue's worth per call;
    /// the rest are picked up on the next turn of the event loop).
    pub(super) fn process_queue(&mut self) {
        let buf = &mut self.buf;
        let _ = self.state.drain(0, |chain, mem| {
            Served::Used(fill(chain, mem, buf).unwrap_or_else(|e| {
                warn_limited!("virtio-rng: bad request: {e}");
                0
            }))
        });
    }
}

/// Fills the writable part of `chain` (up to [`MAX_REQUEST_BYTES`]) with
/// random bytes; returns how many were written.
fn fill(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Result<u32, Box<dyn std::error::Error>> {
    let mut writer = chain.writer(mem)?;
    let n = writer
        .available_bytes()
        .min(buf.len())
        .min(MAX_REQUEST_BYTES);
    getrandom(&mut buf[..n])?;
    writer.write_all(&buf[..n])?;
    Ok(u32::try_from(n)?)
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> Result<(), RngError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that
        // outlives the call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngError::GetRandom(err));
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};
    use crate::devices::virtio::{ActivateContext, Interrupt, INT_CONFIG, INT_VRING};

    fn active_rng(mem: &GuestMemoryMmap, tq: &TestQueue) -> (Rng, Arc<Interrupt>) {
        let mut rng = Rng::new().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        rng.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![tq.queue()],
            interrupt: irq.clone(),
            acked_features: 1 << VIRTIO_F_VERSION_1,
        })
        .unwrap();
        (rng, irq)
    }

    #[test]
    fn fills_buffers_and_bounds_requests() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        let (mut rng, irq) = active_rng(&mem, &tq);
        mem.write_slice(&[0u8; 64], GuestAddress(0x10_0000))
            .unwrap();
        let a = tq.add_chain(&mem, &[(0x10_0000, 32, true), (0x10_0020, 32, true)]);
        // A read-only buffer gets nothing.
        let b = tq.add_chain(&mem, &[(0x20_0000, 32, false)]);
        // A huge buffer gets at most MAX_REQUEST_BYTES.
        let c = tq.add_chain(&mem, &[(0x40_0000, 1 << 20, true)]);
        // A buffer outside guest memory is skipped, not fatal.
        let d = tq.add_chain(&mem, &[(0x1_0000_0000, 32, true)]);
        rng.process_queue();
        let used = tq.take_used(&mem);
        assert_eq!(
            used,
            vec![(a, 64), (b, 0), (c, MAX_REQUEST_BYTES as u32), (d, 0)]
        );
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_ne!(got, [0u8; 64]);
        assert_eq!(irq.status(), INT_VRING);
    }

    #[test]
    fn hostile_avail_index_marks_needs_reset() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 0x1000, 16);
        let (mut rng, irq) = active_rng(&mem, &tq);
        tq.set_avail_idx(&mem, 1000);
        rng.process_queue();
        assert!(irq.needs_reset());
        assert_ne!(irq.status() & INT_CONFIG, 0);
        // Reset brings it back.
        rng.reset();
        assert!(!rng.state.is_active());
    }
}
