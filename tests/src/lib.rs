//! Helpers shared by kiln's end-to-end tests.
//!
//! These tests need a hardware-semantics `/dev/kvm`. `tools/test` builds them
//! on the host and runs them inside the testbed; run anywhere else without
//! KVM they fail with the reason instead of passing silently.

use std::path::{Path, PathBuf};

pub mod cpio;
pub mod packages;

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
    use std::path::Path;
    use std::time::Duration;

    use kiln::vm_process::{ExecOutput, SpawnOptions, VmProcess, VmProcessError, VmSpec, VmmExit};
    use kiln_agent::protocol::files::FileDigest;
    use kiln_agent::protocol::{ExecRequest, ExitStatus, Pong};
    use kiln_vmm::config::{DriveConfig, VmConfig};
    use tokio::io::{AsyncRead, AsyncWrite};

    use super::{artifact, require_kvm};

    /// How long a test VM may take to boot in the testbed (boots there are
    /// roughly 40x slower than native).
    pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

    /// Boots tried before a guest crash fails a test (kiln's cold create
    /// uses the same count).
    pub const BOOT_ATTEMPTS: u32 = 2;

    /// The default spec: staged kernel + initramfs, 1 vCPU, 256 MiB.
    pub fn spec() -> VmSpec {
        let mut config = VmConfig::new(artifact("guest/vmlinux"));
        config.initramfs = Some(artifact("guest/initramfs.cpio"));
        config.mem_mib = 256;
        VmSpec {
            vmm: artifact("bin/kiln-vmm"),
            config,
        }
    }

    /// The `python-node` template: the default spec plus the runtime image as
    /// /dev/vda and 512 MiB.
    pub fn python_node_spec() -> VmSpec {
        let mut s = spec();
        s.config.drives = vec![DriveConfig {
            path: artifact("guest/python-node.erofs"),
            read_only: true,
        }];
        s.config.mem_mib = 512;
        s
    }

    /// A booted VM driven from synchronous test code: the async
    /// [`VmProcess`] on a runtime of its own.
    pub struct TestVm {
        rt: tokio::runtime::Runtime,
        vm: Option<VmProcess>,
    }

    impl TestVm {
        /// Spawns a VM from `spec` without waiting for it.
        pub fn spawn(spec: &VmSpec) -> Result<Self, VmProcessError> {
            Self::spawn_with(spec, &SpawnOptions::default())
        }

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
        }

        /// Spawns a VM from `spec` with `options` without waiting for it.
        pub fn spawn_with(spec: &VmSpec, options: &SpawnOptions) -> Result<Self, VmProcessError> {
            let rt = Self::runtime();
            let vm = rt.block_on(async { VmProcess::spawn(spec, options) })?;
            Ok(TestVm { rt, vm: Some(vm) })
        }

        /// Starts a clone of the snapshot in `snapshot_dir` without waiting
        /// for it ([`TestVm::wait_ready`] resumes it).
        pub fn restore(spec: &VmSpec, snapshot_dir: &Path) -> Result<Self, VmProcessError> {
            Self::restore_with(spec, snapshot_dir, &SpawnOptions::default())
        }

        /// [`TestVm::restore`] with spawn options.
        pub fn restore_with(
            spec: &VmSpec,
            snapshot_dir: &Path,
            options: &SpawnOptions,
        ) -> Result<Self, VmProcessError> {
            let rt = Self::runtime();
            let vm = rt.block_on(async { VmProcess::restore(spec, snapshot_dir, options) })?;
            Ok(TestVm { rt, vm: Some(vm) })
        }

        /// Snapshots the VM into its snapshot directory.
        pub fn snapshot(
            &self,
            resume: bool,
        ) -> Result<kiln_vmm::snapshot::SnapshotReport, VmProcessError> {
            self.block_on(self.process().snapshot(resume, Duration::from_secs(120)))
        }

        /// The VM process.
        pub fn process(&self) -> &VmProcess {
            self.vm.as_ref().expect("the VM is there until drop")
        }

        /// Runs `f` on this VM's runtime.
        pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
            self.rt.block_on(f)
        }

        /// Waits for the agent's first answer.
        pub fn wait_ready(&self, timeout: Duration) -> Result<Pong, VmProcessError> {
            self.block_on(self.process().wait_ready(timeout))
        }

        /// Pings the agent.
        pub fn ping(&self) -> Result<Pong, VmProcessError> {
            self.block_on(self.process().ping(Duration::from_secs(60)))
        }

        /// The VMM's pid.
        pub fn pid(&self) -> u32 {
            self.process().pid()
        }

        /// The VM's hybrid-vsock socket (every test VM is a kiln-vmm VM).
        pub fn vsock_uds(&self) -> &Path {
            match self.process().agent() {
                kiln::vm_process::AgentAddr::HybridVsock(uds) => uds,
                other => panic!("not a kiln-vmm VM: {other:?}"),
            }
        }

        /// A fresh blocking connection to the agent (for the agent's own
        /// client API, e.g. the process operations).
        pub fn connect(&self) -> std::io::Result<std::os::unix::net::UnixStream> {
            use kiln::vm_process::AgentAddr;
            match self.process().agent() {
                AgentAddr::HybridVsock(uds) => kiln_vmm::vm::hybrid_vsock::connect(
                    uds,
                    kiln_agent::protocol::AGENT_VSOCK_PORT,
                    Duration::from_secs(30),
                )
                .map_err(std::io::Error::other),
                other => Err(std::io::Error::other(format!(
                    "not a kiln-vmm VM: {other:?}"
                ))),
            }
        }

        /// What the VMM last said and whether it runs.
        pub fn vmm_report(&self) -> String {
            self.process().vmm_report()
        }

        /// Runs a request; collects its output.
        pub fn try_exec(&self, req: ExecRequest, stdin: &[u8]) -> Result<Output, VmProcessError> {
            let stdin: Box<dyn AsyncRead + Send + Unpin> =
                Box::new(std::io::Cursor::new(stdin.to_vec()));
            self.block_on(async {
                let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                let collect = async {
                    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                    while let Some(chunk) = rx.recv().await {
                        match chunk {
                            ExecOutput::Stdout(b) => stdout.extend_from_slice(&b),
                            ExecOutput::Stderr(b) => stderr.extend_from_slice(&b),
                        }
                    }
                    (stdout, stderr)
                };
                let (status, (stdout, stderr)) =
                    tokio::join!(self.process().exec(req, Some(stdin), tx), collect);
                Ok(Output {
                    status: status?,
                    stdout,
                    stderr,
                })
            })
        }

        /// Uploads `source` to `path`.
        pub fn upload(
            &self,
            path: &str,
            mode: Option<u32>,
            source: impl AsyncRead + Send + Unpin + 'static,
        ) -> Result<FileDigest, VmProcessError> {
            self.block_on(self.process().upload(path, mode, source))
        }

        /// Downloads `path` into `sink`.
        pub fn download(
            &self,
            path: &str,
            sink: impl AsyncWrite + Send + Unpin + 'static,
        ) -> Result<FileDigest, VmProcessError> {
            self.block_on(self.process().download(path, sink))
        }

        /// Downloads `path` into memory.
        pub fn download_vec(&self, path: &str) -> Result<Vec<u8>, VmProcessError> {
            let (mut reader, writer) = tokio::io::duplex(1 << 16);
            self.block_on(async {
                let mut data = Vec::new();
                let (got, read) = tokio::join!(
                    self.process().download(path, writer),
                    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut data)
                );
                got?;
                read.expect("reading a duplex pipe");
                Ok(data)
            })
        }

        /// Asks the guest to power off; kills the VMM after `timeout`.
        pub fn shutdown(mut self, timeout: Duration) -> Result<VmmExit, VmProcessError> {
            let vm = self.vm.take().expect("the VM is there until drop");
            let exit = self.block_on(vm.shutdown(timeout));
            drop(vm);
            exit
        }
    }

    impl Drop for TestVm {
        fn drop(&mut self) {
            // Kill and reap the VMM while the runtime (whose task reaps it)
            // still runs: no zombie outlives the test VM.
            if let Some(vm) = self.vm.take() {
                let _ = vm.kill();
                // The timer is made inside the runtime (it needs its clock).
                let _ = self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), vm.wait()).await
                });
                let _guard = self.rt.enter();
                drop(vm);
            }
        }
    }

    /// Boots the `python-node` template.
    pub fn boot_python_node() -> TestVm {
        boot_spec(&python_node_spec())
    }

    /// Boots a VM from `spec` and waits for its agent.
    ///
    /// Like kiln's cold create, boots once more when the guest crashed or
    /// never answered: the testbed's nested SVM corrupts a small share of
    /// guests (issue 9), and now and then one stays silent (its agent
    /// connection stuck in LocalInit); any other failure fails the test,
    /// and a guest that fails every attempt fails it too.
    pub fn boot_spec(spec: &VmSpec) -> TestVm {
        boot_spec_with(spec, &SpawnOptions::default())
    }

    /// [`boot_spec`] with spawn options (a snapshot directory, ...).
    pub fn boot_spec_with(spec: &VmSpec, options: &SpawnOptions) -> TestVm {
        ready_within_attempts(
            "boot",
            || TestVm::spawn_with(spec, options).expect("spawn kiln-vmm"),
            |e| e.guest_crashed() || matches!(e, VmProcessError::NotReady(_)),
        )
    }

    /// Starts a VM with `start` until its agent answers, at most
    /// [`BOOT_ATTEMPTS`] times, starting again only after a failure
    /// `retry` accepts; any other failure fails the test.
    fn ready_within_attempts(
        what: &str,
        start: impl Fn() -> TestVm,
        retry: impl Fn(&VmProcessError) -> bool,
    ) -> TestVm {
        require_kvm();
        let mut attempt = 1;
        loop {
            let vm = start();
            match vm.wait_ready(BOOT_TIMEOUT) {
                Ok(_) => return vm,
                Err(e) if retry(&e) && attempt < BOOT_ATTEMPTS => {
                    eprintln!("{what} attempt {attempt}: the guest failed ({e}); once more");
                    drop(vm);
                    attempt += 1;
                }
                Err(e) => panic!(
                    "{what}: the VM did not become ready: {e}; {}",
                    vm.vmm_report()
                ),
            }
        }
    }

    /// Restores a clone of the snapshot in `snapshot_dir` and waits until
    /// its agent answers. Like [`boot_spec`], restores once more when the
    /// clone's guest crashed (the triple faults booted VMs hit in the
    /// testbed come to clones too; README, Known problems); any other
    /// failure fails the test.
    pub fn restore_spec(spec: &VmSpec, snapshot_dir: &std::path::Path) -> TestVm {
        ready_within_attempts(
            "restore",
            || TestVm::restore(spec, snapshot_dir).expect("spawn the clone"),
            VmProcessError::guest_crashed,
        )
    }

    /// Boots the default VM.
    pub fn boot() -> TestVm {
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
    pub fn exec(vm: &TestVm, argv: &[&str], stdin: Option<&[u8]>) -> Output {
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
    pub fn exec_req(vm: &TestVm, req: ExecRequest, stdin: &[u8]) -> Output {
        let argv = req.argv.clone();
        vm.try_exec(req, stdin)
            .unwrap_or_else(|e| panic!("exec {argv:?} failed: {e}"))
    }

    /// Bytes as text (lossy).
    pub fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// The stdout of an exec that must have exited 0 (else the test fails
    /// with its status and both streams).
    pub fn ok(out: &Output) -> String {
        assert_eq!(
            out.status.code,
            Some(0),
            "status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `sh -c script`.
    pub fn sh(vm: &TestVm, script: &str) -> Output {
        exec(vm, &["sh", "-c", script], None)
    }
}

/// A `kiln serve` daemon from the staged binaries, booting real VMs.
pub mod daemon {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{artifact, require_kvm};

    /// The running daemon; SIGTERMed (drained) and its VMs checked gone
    /// when dropped.
    pub struct Daemon {
        /// The `kiln serve` process.
        pub child: Child,
        /// Its socket.
        pub socket: PathBuf,
        /// Its state directory.
        pub state_dir: PathBuf,
        config: PathBuf,
    }

    /// A fresh scratch directory.
    pub fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    impl Daemon {
        /// Starts `kiln serve` in `dir` with `config` (TOML; `state_dir` is
        /// set here) and waits until it answers.
        pub fn start(dir: &Path, config: &str) -> Daemon {
            require_kvm();
            let state_dir = dir.join("state");
            let path = dir.join("kiln.toml");
            let text = format!(
                "state_dir = {:?}\n{config}",
                state_dir.display().to_string()
            );
            std::fs::write(&path, text).expect("write config");
            let d = Daemon {
                child: Self::spawn(&path),
                socket: state_dir.join("kiln.sock"),
                state_dir,
                config: path,
            };
            d.wait_answering();
            d
        }

        fn spawn(config: &Path) -> Child {
            Command::new(artifact("bin/kiln"))
                .arg("serve")
                .arg("--config")
                .arg(config)
                .env("KILN_LOG", "info")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn kiln serve")
        }

        /// Waits until the socket answers.
        pub fn wait_answering(&self) {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                    use std::io::{Read, Write};
                    let _ = s.write_all(
                        b"GET /v1/health HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
                    );
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    if out.starts_with("HTTP/1.1 200") {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "kiln serve did not answer");
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// The value of the `kiln_vm_starts_total` sample of `template` with
        /// `how` (boot, restore, snapshot); 0 when there is none yet.
        pub fn vm_starts(&self, template: &str, how: &str) -> u64 {
            let metrics = self.get("/metrics");
            let needle = format!("kiln_vm_starts_total{{template=\"{template}\",how=\"{how}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&needle))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        }

        /// `GET path` on the socket; the whole response (status line,
        /// headers, body).
        pub fn get(&self, path: &str) -> String {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&self.socket).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("response");
            out
        }

        /// SIGKILLs the daemon (its VMs live on) and starts it again on
        /// the same config.
        pub fn kill_and_restart(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.child = Self::spawn(&self.config);
            self.wait_answering();
        }

        /// SIGTERM; waits up to 120 s for the drain; returns whether it
        /// exited 0.
        pub fn stop(&mut self) -> bool {
            // SAFETY: kill(2) on our own child; no memory involved.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status.success();
                }
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// kiln-vmm processes started from this daemon's state dir.
        pub fn vmm_pids(&self) -> Vec<i32> {
            vmm_pids_under(&self.state_dir)
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_none() {
                self.stop();
            }
            for pid in self.vmm_pids() {
                // SAFETY: kill(2) on a VM this test's daemon started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Pids of the kiln-vmm processes (supervisors: the pids their callers
    /// started, not the jailed VMMs under them) whose command line mentions
    /// `dir`.
    pub fn vmm_pids_under(dir: &Path) -> Vec<i32> {
        let needle = format!("{}/", dir.display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let matched: Vec<i32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let live = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        !s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(false);
                live && cmd
                    .split(|b| *b == 0)
                    .any(|a| String::from_utf8_lossy(a).starts_with(&needle))
                    && !cmd.split(|b| *b == 0).any(|a| a == b"serve")
            })
            .collect();
        // A jailed kiln-vmm's VMM is its child, with the same command line.
        let parent = |pid: i32| -> Option<i32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        matched
            .iter()
            .copied()
            .filter(|pid| parent(*pid).is_none_or(|ppid| !matched.contains(&ppid)))
            .collect()
    }
}
