//! vCPU threads: running the guest and kicking it out of `KVM_RUN`.
//!
//! One thread per vCPU runs [`run_loop::run`]: port and MMIO exits go to
//! the buses, everything that ends the VM is recorded in the shared
//! [`ExitState`](crate::vm::exit::ExitState). [`threads::VcpuThreads`]
//! stops them: set the stop flag, then signal each thread until it leaves
//! the guest and returns. [`pause::PauseCtl`] parks them for a snapshot.

pub mod kick;
pub mod pause;
pub mod run_loop;
pub mod threads;
