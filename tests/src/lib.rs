//! Helpers shared by kiln's end-to-end tests.
//!
//! These tests need a hardware-semantics `/dev/kvm`. `tools/test` builds them
//! on the host and runs them inside the testbed; run anywhere else without
//! KVM they fail with the reason instead of passing silently.

use std::path::{Path, PathBuf};

/// Directory holding kiln's binaries and guest artifacts for the tests.
/// `tools/test` sets `KILN_ARTIFACTS`; inside the testbed it is `/kiln`.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("KILN_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/kiln"))
}

/// Path of an artifact, failing the test loudly when it is missing.
pub fn artifact(rel: &str) -> PathBuf {
    let path = artifacts_dir().join(rel);
    assert!(
        path.exists(),
        "test artifact {} is missing: run the end-to-end tests through tools/test, which builds and stages them",
        path.display()
    );
    path
}

/// Fails the calling test with the reason when this host has no usable KVM.
pub fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "/dev/kvm is missing: end-to-end tests must run where KVM works; run them with tools/test, which uses the testbed"
    );
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        panic!("/dev/kvm is not accessible ({e}): run as a user in the kvm group, or through tools/test");
    }
}
