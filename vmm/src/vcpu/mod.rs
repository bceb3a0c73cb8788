//! vCPU threads: running the guest and kicking it out of `KVM_RUN`.

pub mod kick;
