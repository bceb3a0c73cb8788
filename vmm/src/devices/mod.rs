//! Emulated devices: the bus that routes guest I/O exits, legacy devices and
//! virtio devices.

pub mod bus;
pub mod legacy;
pub mod virtio;
