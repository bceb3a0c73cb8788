//! kiln-vmm: one KVM microVM per process.
//!
//! The library builds and runs a VM from a config; the `kiln-vmm` binary is a
//! thin wrapper over it.

pub mod devices;
pub mod hypervisor;
pub mod layout;
pub mod probe;
pub mod vcpu;
