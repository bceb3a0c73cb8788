//! The virtio-mmio transport's snapshot state: its registers, each queue's
//! layout, the interrupt status, the device's identity (type, features,
//! config space) to check a restore against, and the running device's
//! shared state ([`DeviceStateSnapshot`]: ring positions, broken flag).
//!
//! Restoring reuses activation: the queues are rebuilt from the saved
//! layout at the saved ring positions and handed to the device's own
//! `activate`, so every device restores the way it starts.

use serde::{Deserialize, Serialize};

use super::{MmioTransport, QueueConfig};
use crate::devices::virtio::{
    ActivateContext, DeviceOwnState, DeviceStateSnapshot, STATUS_DRIVER_OK, STATUS_FAILED,
};

/// Bytes of device config space a snapshot compares (kiln's largest,
/// virtio-blk's, is 16).
const CONFIG_BYTES: u64 = 64;

/// One queue: the registers the driver wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// QueueNumMax.
    pub max: u16,
    /// QueueNum as written.
    pub size: u32,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

/// One virtio-mmio device as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Virtio device type.
    pub device_type: u32,
    /// Features the device offered.
    pub avail_features: u64,
    /// The device's config space (first [`CONFIG_BYTES`] bytes).
    pub config: Vec<u8>,
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// The driver wrote a feature page kiln does not have.
    pub driver_features_bogus: bool,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET was signalled.
    pub needs_reset: bool,
    /// The running device's shared state; `None` while it is inactive.
    pub device: Option<DeviceStateSnapshot>,
    /// The device's own state, for the devices that keep one (active or not).
    pub own: Option<DeviceOwnState>,
}

/// Why a saved device cannot be restored onto this one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// A different device type, feature set or config space (a drive of
    /// another size, another vsock CID).
    #[error("device differs from the snapshot's: {0}")]
    Mismatch(&'static str),
    /// The saved queues do not describe valid rings in guest memory.
    #[error("queue {0} in the snapshot is invalid")]
    InvalidQueue(usize),
    /// The device refused the restored queues.
    #[error("device refused activation: {0}")]
    Activate(String),
}

fn read_config(t: &MmioTransport) -> Vec<u8> {
    let dev = t.dev();
    let mut config = vec![0u8; CONFIG_BYTES as usize];
    for (i, word) in config.chunks_mut(4).enumerate() {
        dev.read_config(i as u64 * 4, word);
    }
    config
}

impl MmioTransport {
    /// This device's state, for a snapshot. The vCPUs are paused and the
    /// caller holds the device (no event is being processed).
    pub fn save(&self) -> TransportState {
        let queues = self
            .queues
            .iter()
            .map(|q| QueueSnapshot {
                max: q.max,
                size: q.size,
                ready: q.ready,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
            })
            .collect();
        let (device, own) = {
            let dev = self.dev();
            (dev.state().save(), dev.save_own())
        };
        TransportState {
            device_type: self.device_type,
            avail_features: self.avail_features,
            config: read_config(self),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            driver_features_bogus: self.driver_features_bogus,
            queue_sel: self.queue_sel,
            queues,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            device,
            own,
        }
    }

    /// Loads `state` into this freshly built transport and, when the driver
    /// had set DRIVER_OK, activates the device on the saved rings.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        if state.device_type != self.device_type {
            return Err(RestoreError::Mismatch("device type"));
        }
        if state.avail_features != self.avail_features {
            return Err(RestoreError::Mismatch("offered features"));
        }
        if state.config != read_config(self) {
            return Err(RestoreError::Mismatch(
                "config space (drive size or vsock cid)",
            ));
        }
        if state.queues.len() != self.queues.len()
            || state
                .queues
                .iter()
                .zip(&self.queues)
                .any(|(s, q)| s.max != q.max)
        {
            return Err(RestoreError::Mismatch("queues"));
        }
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            *q = QueueConfig {
                max: s.max,
                size: s.size,
                ready: s.ready,
                desc: s.desc,
                avail: s.avail,
                used: s.used,
            };
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.driver_features_bogus = state.driver_features_bogus;
        if let Some(own) = &state.own {
            if !self.dev().restore_own(own) {
                return Err(RestoreError::Mismatch("device state of another kind"));
            }
        }
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        if state.status & STATUS_DRIVER_OK != 0 && state.status & STATUS_FAILED == 0 {
            let device = state
                .device
                .as_ref()
                .filter(|d| d.queues.len() == self.queues.len())
                .ok_or(RestoreError::Mismatch(
                    "running device without its queue state",
                ))?;
            let mut queues = Vec::with_capacity(state.queues.len());
            for (i, (cfg, position)) in self.queues.iter().zip(&device.queues).enumerate() {
                let mut q = cfg.build(&self.mem).ok_or(RestoreError::InvalidQueue(i))?;
                if cfg.ready {
                    position.apply(&mut q);
                }
                queues.push(q);
            }
            let ctx = ActivateContext {
                mem: self.mem.clone(),
                queues,
                interrupt: self.interrupt.clone(),
                acked_features: self.driver_features,
            };
            let mut dev = self.dev();
            dev.activate(ctx)
                .map_err(|e| RestoreError::Activate(e.to_string()))?;
            dev.state_mut().restore(device);
        }
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::tests::{negotiate, r, setup_queue};
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::guest_memory;
    use crate::devices::virtio::VirtioDevice;

    fn rng_transport(mem: &vm_memory::GuestMemoryMmap) -> MmioTransport {
        let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Rng::new().unwrap()));
        MmioTransport::new(mem.clone(), dev).unwrap()
    }

    #[test]
    fn running_device_round_trips_with_ring_positions() {
        let mem = guest_memory();
        let mut t = rng_transport(&mem);
        negotiate(&mut t, 1 << crate::devices::virtio::VIRTIO_F_VERSION_1);
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        super::super::tests::w(&mut t, 0x070, 0xf);
        assert_eq!(r(&mut t, 0x070), 0xf, "driver ok");
        let mut saved = t.save();
        assert_eq!(saved.status, 0xf);
        assert_eq!(saved.queues[0].desc, 0x1000);
        assert!(saved.queues[0].ready);
        // A device that served requests stands further along its rings.
        let device = saved.device.as_mut().unwrap();
        device.queues[0].next_avail = 5;
        device.queues[0].next_used = 4;
        saved.interrupt_status = crate::devices::virtio::INT_VRING;

        // Same state onto a fresh transport over the same memory.
        let mut fresh = rng_transport(&mem);
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), saved);
        assert_eq!(r(&mut fresh, 0x070), 0xf);
        assert_eq!(
            fresh.interrupt().eventfd().read().unwrap(),
            1,
            "pending bits re-raised"
        );
        let dev = fresh.device().lock().unwrap();
        let queues = dev.state().save().unwrap().queues;
        assert_eq!((queues[0].next_avail, queues[0].next_used), (5, 4));
    }

    #[test]
    fn restore_refuses_another_device_or_bad_rings() {
        let mem = guest_memory();
        let mut t = rng_transport(&mem);
        negotiate(&mut t, 1 << crate::devices::virtio::VIRTIO_F_VERSION_1);
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        super::super::tests::w(&mut t, 0x070, 0xf);
        let saved = t.save();

        let mut other = saved.clone();
        other.device_type = 19;
        assert_eq!(
            rng_transport(&mem).restore(&other),
            Err(RestoreError::Mismatch("device type"))
        );
        let mut other = saved.clone();
        other.config[0] = 1;
        assert!(matches!(
            rng_transport(&mem).restore(&other),
            Err(RestoreError::Mismatch(_))
        ));
        let mut other = saved.clone();
        other.device = None;
        assert_eq!(
            rng_transport(&mem).restore(&other),
            Err(RestoreError::Mismatch(
                "running device without its queue state"
            ))
        );
        let mut other = saved.clone();
        other.queues[0].used = u64::MAX - 4;
        assert_eq!(
            rng_transport(&mem).restore(&other),
            Err(RestoreError::InvalidQueue(0))
        );
    }
}
