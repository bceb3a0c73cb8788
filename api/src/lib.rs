//! kiln: microVM sandboxes for AI agents.
//!
//! [`vm_process`] runs one microVM as a `kiln-vmm` child process and drives
//! its guest agent; [`artifacts`] finds the binaries and guest images;
//! [`doctor`] diagnoses the host. The daemon, warm pool and HTTP API join
//! them here.

mod agent_link;
pub mod artifacts;
pub mod doctor;
pub mod kvm_check;
pub mod lang;
pub mod template;
pub mod vm_process;
