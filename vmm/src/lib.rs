//! kiln-vmm: one KVM microVM per process.
//!
//! The library builds and runs a VM from a config; the `kiln-vmm` binary is a
//! thin wrapper over it.
//!
//! ```no_run
//! let config = kiln_vmm::config::VmConfig::new("vmlinux");
//! let vm = kiln_vmm::builder::start(&config)?;
//! let reason = vm.wait();
//! assert!(reason.is_clean());
//! # Ok::<(), kiln_vmm::builder::BuildError>(())
//! ```

pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod hypervisor;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod probe;
pub mod resident;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

/// The `kiln-vmm` binary's exit status when the guest ended the VM
/// uncleanly (a triple fault, a kernel panic, an unexpected reset).
pub const EXIT_GUEST_CRASHED: i32 = 1;
/// The `kiln-vmm` binary's exit status when it could not build or start the
/// VM (bad config, missing file, no KVM, jail or seccomp setup).
pub const EXIT_SETUP_FAILED: i32 = 2;
