//! Helpers shared by kiln's end-to-end tests.
//!
//! These tests need a hardware-semantics `/dev/kvm`. `tools/test` builds them
//! on the host and runs them inside the testbed; run anywhere else without
//! KVM they fail with the reason instead of passing silently.

use std::path::{Path, PathBuf};

pub mod cpio;

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

/// Booting test VMs from the staged artifacts.
pub mod vm {
    use std::time::Duration;

    use kiln::vm_process::{VmProcess, VmSpec};
    use kiln_agent::protocol::{ExecRequest, ExitStatus};

    use super::{artifact, require_kvm};

    /// How long a test VM may take to boot in the testbed (boots there are
    /// roughly 40x slower than native).
    pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

    /// The default spec: staged kernel + initramfs, 1 vCPU, 256 MiB.
    pub fn spec() -> VmSpec {
        VmSpec {
            vmm: artifact("bin/kiln-vmm"),
            kernel: artifact("guest/vmlinux"),
            initramfs: artifact("guest/initramfs.cpio"),
            vcpus: 1,
            mem_mib: 256,
            serial_log: None,
            kernel_args: None,
            drives: Vec::new(),
        }
    }

    /// The `python-node` template: the default spec plus the runtime image as
    /// /dev/vda and 512 MiB.
    pub fn python_node_spec() -> VmSpec {
        let mut s = spec();
        s.drives = vec![artifact("guest/python-node.erofs")];
        s.mem_mib = 512;
        s
    }

    /// Boots the `python-node` template.
    pub fn boot_python_node() -> VmProcess {
        boot_spec(&python_node_spec())
    }

    /// Boots a VM from `spec` and waits for its agent.
    pub fn boot_spec(spec: &VmSpec) -> VmProcess {
        require_kvm();
        let mut vm = VmProcess::spawn(spec).expect("spawn kiln-vmm");
        if let Err(e) = vm.wait_ready(BOOT_TIMEOUT) {
            panic!("VM did not become ready: {e}");
        }
        vm
    }

    /// Boots the default VM.
    pub fn boot() -> VmProcess {
        boot_spec(&spec())
    }

    /// Output and status of one exec.
    pub struct Output {
        /// Exit status from the agent.
        pub status: ExitStatus,
        /// Everything written to stdout.
        pub stdout: Vec<u8>,
        /// Everything written to stderr.
        pub stderr: Vec<u8>,
    }

    /// Runs `argv` with `stdin` and collects its output.
    pub fn exec(vm: &VmProcess, argv: &[&str], stdin: Option<&[u8]>) -> Output {
        exec_req(
            vm,
            ExecRequest {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: Vec::new(),
                cwd: None,
                stdin: stdin.is_some(),
                timeout_ms: Some(60_000),
                ..Default::default()
            },
            stdin.unwrap_or_default(),
        )
    }

    /// Runs a full request and collects its output.
    pub fn exec_req(vm: &VmProcess, req: ExecRequest, stdin: &[u8]) -> Output {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let status = vm
            .exec(
                &req,
                stdin,
                |b| stdout.extend_from_slice(b),
                |b| stderr.extend_from_slice(b),
            )
            .unwrap_or_else(|e| panic!("exec {:?} failed: {e}", req.argv));
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// `sh -c script`.
    pub fn sh(vm: &VmProcess, script: &str) -> Output {
        exec(vm, &["sh", "-c", script], None)
    }
}
