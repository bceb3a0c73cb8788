//! Virtio transports. kiln only has virtio-mmio (no PCI in the guest).

pub mod mmio;
