//! kiln: microVM sandboxes for AI agents.
//!
//! [`Kiln`] is the way in: [`Kiln::embedded`] runs pools and sandboxes in
//! this process (each VM still its own `kiln-vmm` process),
//! [`Kiln::connect_unix`] talks to a `kiln serve` daemon; both have the same
//! types and methods. [`vm_process`] runs one microVM and drives its guest
//! agent; [`artifacts`] finds the binaries and guest images; [`doctor`]
//! diagnoses the host.

mod agent_link;
pub mod artifacts;
pub(crate) mod auth;
mod b64;
mod backend;
pub mod config;
mod core;
pub mod doctor;
pub mod egress;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod kiln;
pub mod kvm_check;
pub mod lang;
pub mod model;
pub mod registry;
pub mod server;
pub mod template;
pub mod template_build;
pub mod vm_process;

pub use config::Config;
pub use core::lock::daemon_holds;
pub use error::{EndReason, Error, ErrorBody, ErrorDetail, Result};
pub use kiln::{
    Exec, ExecBuilder, ExecControl, ExecOutput, FileStream, Files, Kiln, Sandbox, Sandboxes,
};

/// What starts VMs: kiln-vmm in production, a host agent for tests.
pub mod launcher {
    pub use crate::core::launcher::{HostAgentLauncher, KilnVmmLauncher, Launcher};
}
