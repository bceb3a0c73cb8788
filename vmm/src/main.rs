//! `kiln-vmm`: runs one microVM until its guest exits.
//!
//! Exit status: 0 when the guest reset or powered off (or SIGTERM/SIGINT
//! stopped the VM), 1 when the guest crashed or the VMM failed while
//! running it, 2 when the VM could not be started. Errors are one line on
//! stderr. SIGUSR1 logs every virtio device's state (queue indexes,
//! interrupt status, vsock connections and their credit) without stopping
//! anything.
//!
//! The VMM jails itself before the guest runs (`kiln_vmm::jail`,
//! `kiln_vmm::seccomp`; `--no-jail` turns it off for debugging). With a pid
//! namespace, this process supervises the VMM (pid 1 of that namespace)
//! and ends as it ends; a seccomp violation kills it with SIGSYS after the
//! line `kiln-vmm: seccomp violation: syscall N in the K thread`.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use kiln_vmm::builder;
use kiln_vmm::config::{ControlConfig, DriveConfig, VmConfig, VsockConfig};
use kiln_vmm::devices::virtio::DumpTrigger;
use kiln_vmm::jail::{self, Jailed, Role};
use kiln_vmm::seccomp::{self, ThreadFilters, ThreadKind};
use kiln_vmm::vm::exit::ExitReason;
use kiln_vmm::vm::timings::{Timings, TimingsReport};
use kiln_vmm::vm::StopHandle;

/// Run one kiln microVM until its guest exits.
#[derive(Debug, Parser)]
#[command(name = "kiln-vmm", version)]
struct Args {
    /// VM config as JSON (kiln_vmm::config::VmConfig); flags override it.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux (PVH) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest RAM in MiB.
    #[arg(long)]
    mem_mib: Option<u64>,
    /// Back guest RAM with small pages only (no transparent huge pages).
    #[arg(long)]
    no_huge_pages: bool,
    /// Enable COM1 and write its output (and the kernel console) to PATH.
    #[arg(long, value_name = "PATH")]
    serial_log: Option<PathBuf>,
    /// Enable virtio-vsock with its host side on this unix socket.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u32,
    /// Extra kernel command line.
    #[arg(long, allow_hyphen_values = true)]
    cmdline_extra: Option<String>,
    /// Leave out the boot-timer device.
    #[arg(long)]
    no_boot_timer: bool,
    /// Write boot timings and the exit reason as JSON to PATH on exit.
    #[arg(long, value_name = "PATH")]
    timings_json: Option<PathBuf>,
    /// Attach a read-only virtio-blk disk backed by PATH (repeatable; the
    /// guest sees /dev/vda, /dev/vdb, ... in command-line order, after the
    /// config file's drives).
    #[arg(long, value_name = "PATH")]
    drive: Vec<PathBuf>,
    /// Attach a read-write virtio-blk disk backed by PATH (repeatable).
    #[arg(long, value_name = "PATH")]
    drive_rw: Vec<PathBuf>,
    /// Run without the jail (namespaces, private root, unprivileged ids,
    /// cgroup, rlimits, seccomp): for debugging only.
    #[arg(long)]
    no_jail: bool,
    /// Keep the jail but without seccomp filters: for debugging only.
    #[arg(long)]
    no_seccomp: bool,
    /// uid the VMM switches to when started as root.
    #[arg(long, value_name = "UID")]
    jail_uid: Option<u32>,
    /// gid the VMM switches to when started as root.
    #[arg(long, value_name = "GID")]
    jail_gid: Option<u32>,
    /// Parent of the VM's cgroup, relative to the cgroup v2 mount.
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// CPU quota in percent of one CPU (cgroup cpu.max).
    #[arg(long, value_name = "PERCENT")]
    cpu_quota_percent: Option<u32>,
    /// Memory the VMM may use beyond guest RAM (cgroup memory.max).
    #[arg(long, value_name = "MIB")]
    vmm_memory_allowance_mib: Option<u64>,
    /// Serve snapshot requests on this unix socket (needs --snapshot-dir).
    #[arg(long, value_name = "PATH", requires = "snapshot_dir")]
    control_socket: Option<PathBuf>,
    /// Where snapshots taken through the control socket are written.
    #[arg(long, value_name = "DIR", requires = "control_socket")]
    snapshot_dir: Option<PathBuf>,
    /// Resume from the snapshot in DIR instead of booting the kernel.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// Jail self-test: once the guest's userspace starts, vCPU 0 makes a
    /// syscall its seccomp filter forbids, which must kill the VMM.
    #[arg(long, hide = true)]
    test_seccomp_violation: bool,
}

/// The signal that stopped the VM, if any.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

fn main() {
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let parsed = start.elapsed();
    init_logging();
    tracing::debug!(
        "step: main entered, {} us after process start (arguments parsed at {} us)",
        start.elapsed().as_micros(),
        parsed.as_micros()
    );
    // Blocked before any thread exists, so every thread inherits the mask;
    // the signal thread (or the supervisor) takes them with sigwait.
    if let Err(e) = block_signals() {
        fail(
            kiln_vmm::EXIT_SETUP_FAILED,
            &format!("cannot set up signal handling: {e}"),
        );
    }
    let mut config = match build_config(&args, &matches) {
        Ok(c) => c,
        Err(e) => fail(kiln_vmm::EXIT_SETUP_FAILED, &e),
    };
    // Opened before the jail, whose root may not hold its directory.
    let mut timings_file = args.timings_json.as_ref().map(|path| {
        File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| {
                fail(
                    kiln_vmm::EXIT_SETUP_FAILED,
                    &format!("cannot open {}: {e}", path.display()),
                )
            })
    });
    tracing::debug!("step: config read");
    // Read before the jail, whose root has no /sys.
    if config.huge_pages && config.restore.is_none() {
        kiln_vmm::memory::host_has_huge_pages();
    }
    let jailed = if config.jail.enabled {
        match jail::enter(&mut config) {
            Ok(Role::Supervisor(supervisor)) => supervisor.run(),
            Ok(Role::Vmm(jailed)) => jailed,
            Err(e) => fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e)),
        }
    } else {
        tracing::warn!(
            "jail off (--no-jail): the VMM runs with the caller's privileges and view of the host"
        );
        Jailed::none()
    };
    tracing::debug!("step: jail entered");
    let built = match builder::build(&config, start) {
        Ok(built) => built,
        Err(e) => fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e)),
    };
    if let Err(e) = jailed.finish() {
        fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e));
    }
    tracing::debug!("step: privileges dropped");
    let filters = if !config.jail.seccomp_on() {
        if config.jail.enabled {
            tracing::warn!("seccomp off (--no-seccomp): every thread may make any syscall");
        }
        None
    } else if !seccomp::kernel_supports_seccomp() {
        tracing::warn!("jail: this kernel has no seccomp: the VMM runs without syscall filters");
        None
    } else {
        match ThreadFilters::for_vmm() {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e)),
        }
    };
    tracing::debug!("step: seccomp filters ready");
    let vm = match built.start(filters.clone()) {
        Ok(vm) => vm,
        Err(e) => fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e)),
    };
    tracing::debug!("step: vm started");
    let handles = Arc::new(OnceLock::<(StopHandle, DumpTrigger)>::new());
    let _ = handles.set((vm.stop_handle(), vm.dump_trigger()));
    if let Err(e) = spawn_signal_thread(handles, filters.clone()) {
        fail(
            kiln_vmm::EXIT_SETUP_FAILED,
            &format!("cannot set up signal handling: {e}"),
        );
    }
    if let Some(filters) = &filters {
        if let Err(e) = filters.install(ThreadKind::Main) {
            fail(kiln_vmm::EXIT_SETUP_FAILED, &error_chain(&e));
        }
    }
    // The code that built the VM (argument parsing, the jail, loading,
    // filter compilation) has run its course: drop its pages, and let the
    // vCPU and device loops fault back the little they use.
    match kiln_vmm::resident::release_startup_code() {
        Ok(n) => tracing::debug!("step: released {} KiB of start-up code", n / 1024),
        Err(e) => tracing::debug!("start-up code stays resident: {e}"),
    }
    let reason = vm.wait();
    let timings = vm.timings();
    let crash_state = vm.crash_state();
    drop(vm);
    if let (Some(path), Some(file)) = (&args.timings_json, &mut timings_file) {
        if let Err(e) = write_timings(file, start_wall, &timings, &reason) {
            eprintln!("kiln-vmm: cannot write {}: {e}", path.display());
        }
    }
    match reason {
        ExitReason::Stopped => {
            let sig = STOP_SIGNAL.load(Ordering::SeqCst);
            tracing::info!("stopped by signal {sig}");
        }
        r if r.is_clean() => tracing::info!("{r}"),
        r => match crash_state {
            Some(state) => fail(
                kiln_vmm::EXIT_GUEST_CRASHED,
                &format!("vm exited: {r}; vcpu state: {state}"),
            ),
            None => fail(kiln_vmm::EXIT_GUEST_CRASHED, &format!("vm exited: {r}")),
        },
    }
}

/// The config file (if any) with the flags applied over it.
fn build_config(a: &Args, matches: &ArgMatches) -> Result<VmConfig, String> {
    let mut config = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("invalid config {}: {e}", path.display()))?
        }
        None => VmConfig::new(a.kernel.clone().ok_or("--kernel or --config is required")?),
    };
    if let Some(k) = &a.kernel {
        config.kernel = k.clone();
    }
    if a.initramfs.is_some() {
        config.initramfs = a.initramfs.clone();
    }
    if let Some(v) = a.vcpus {
        config.vcpus = v;
    }
    if let Some(m) = a.mem_mib {
        config.mem_mib = m;
    }
    if a.serial_log.is_some() {
        config.serial_log = a.serial_log.clone();
    }
    if let Some(uds_path) = &a.vsock_uds {
        config.vsock = Some(VsockConfig {
            uds_path: uds_path.clone(),
            guest_cid: a.vsock_cid,
        });
    }
    if let Some(extra) = &a.cmdline_extra {
        config.cmdline_extra = extra.clone();
    }
    if a.no_boot_timer {
        config.boot_timer = false;
    }
    if a.no_huge_pages {
        config.huge_pages = false;
    }
    config.drives.extend(drives_in_order(a, matches));
    if let (Some(socket), Some(snapshot_dir)) = (&a.control_socket, &a.snapshot_dir) {
        config.control = Some(ControlConfig {
            socket: socket.clone(),
            snapshot_dir: snapshot_dir.clone(),
        });
    }
    if a.restore.is_some() {
        config.restore = a.restore.clone();
    }
    apply_jail_flags(a, &mut config.jail);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The jail flags over the config's `jail` section.
fn apply_jail_flags(a: &Args, jail: &mut kiln_vmm::config::JailConfig) {
    if a.no_jail {
        jail.enabled = false;
    }
    if a.no_seccomp {
        jail.seccomp = false;
    }
    if let Some(uid) = a.jail_uid {
        jail.uid = uid;
    }
    if let Some(gid) = a.jail_gid {
        jail.gid = gid;
    }
    if let Some(parent) = &a.cgroup_parent {
        jail.cgroup_parent = parent.clone();
    }
    if a.cpu_quota_percent.is_some() {
        jail.cpu_quota_percent = a.cpu_quota_percent;
    }
    if let Some(mib) = a.vmm_memory_allowance_mib {
        jail.vmm_memory_allowance_mib = mib;
    }
    if a.test_seccomp_violation {
        jail.test_seccomp_violation = true;
    }
}

/// `--drive` and `--drive-rw` in the order they were given.
fn drives_in_order(a: &Args, matches: &ArgMatches) -> Vec<DriveConfig> {
    let indexed = |id: &str, paths: &[PathBuf], read_only: bool| {
        let indices: Vec<usize> = matches
            .indices_of(id)
            .map(Iterator::collect)
            .unwrap_or_default();
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = indices.get(i).copied().unwrap_or(usize::MAX);
                (
                    at,
                    DriveConfig {
                        path: p.clone(),
                        read_only,
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    let mut all = indexed("drive", &a.drive, true);
    all.extend(indexed("drive_rw", &a.drive_rw, false));
    all.sort_by_key(|(at, _)| *at);
    all.into_iter().map(|(_, d)| d).collect()
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(WallAndMonotonic)
        .with_writer(std::io::stderr)
        // The log usually lands in a file that error messages quote.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Log time stamps: wall-clock time, then the host's monotonic clock (the
/// one `Instant` reads) as `m<seconds>.<micros>`, so the debug lines of the
/// supervisor, the VMM and their caller line up step by step.
struct WallAndMonotonic;

impl tracing_subscriber::fmt::time::FormatTime for WallAndMonotonic {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
        // libc's clock_gettime, not rustix's: rustix finds the vDSO lazily
        // through prctl(PR_GET_AUXV) on its first call, which the seccomp
        // filters of the device and vCPU threads (rightly) forbid, and a
        // log line may come first from one of them.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        write!(w, " m{}.{:06}", ts.tv_sec, ts.tv_nsec / 1000)
    }
}

/// The signals this process takes with sigwait: the three the VM acts on,
/// and SIGCHLD for a supervisor.
fn handled_signals() -> Result<libc::sigset_t, std::io::Error> {
    vmm_sys_util::signal::create_sigset(&[
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGUSR1,
        libc::SIGCHLD,
    ])
    .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Blocks SIGTERM, SIGINT, SIGUSR1 and SIGCHLD in the calling thread, and
/// so in every thread started after it.
fn block_signals() -> std::io::Result<()> {
    let set = handled_signals()?;
    // SAFETY: `set` is an initialized sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Handles the blocked signals on a dedicated thread (under its seccomp
/// filter): SIGTERM and SIGINT stop the VM, SIGUSR1 logs the devices' state.
fn spawn_signal_thread(
    handles: Arc<OnceLock<(StopHandle, DumpTrigger)>>,
    filters: Option<Arc<ThreadFilters>>,
) -> Result<(), seccomp::SeccompError> {
    let set = handled_signals().map_err(|source| seccomp::SeccompError::Thread {
        name: "kiln-signals".into(),
        source,
    })?;
    seccomp::spawn_filtered(
        "kiln-signals".into(),
        ThreadKind::Signals,
        filters,
        move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` and `sig` are valid for the call; the signals in `set`
            // are blocked in every thread, as sigwait requires.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 || sig == libc::SIGCHLD {
                continue;
            }
            if sig == libc::SIGUSR1 {
                match handles.get() {
                    Some((_, dump)) => dump.request(),
                    None => tracing::warn!("SIGUSR1 before the VM started: nothing to dump"),
                }
                continue;
            }
            STOP_SIGNAL.store(sig, Ordering::SeqCst);
            if let Some((stop, _)) = handles.get() {
                stop.stop();
            }
        },
    )?;
    Ok(())
}

fn write_timings(
    file: &mut File,
    start_wall: std::time::SystemTime,
    t: &Timings,
    reason: &ExitReason,
) -> std::io::Result<()> {
    let report = TimingsReport::new(start_wall, t, reason.to_string(), reason.is_clean());
    file.set_len(0)?;
    file.rewind()?;
    serde_json::to_writer(&mut *file, &report)?;
    writeln!(file)
}

/// The error and its sources on one line, skipping sources whose text the
/// message already contains.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("kiln-vmm: {message}");
    std::process::exit(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn drives_keep_command_line_order() {
        let argv = [
            "kiln-vmm",
            "--kernel",
            "/k",
            "--drive",
            "/a",
            "--drive-rw",
            "/b",
            "--drive",
            "/c",
        ];
        let matches = Args::command().try_get_matches_from(argv).unwrap();
        let args = Args::from_arg_matches(&matches).unwrap();
        let config = build_config(&args, &matches).unwrap();
        let got: Vec<_> = config
            .drives
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.read_only))
            .collect();
        assert_eq!(got, vec![("/a", true), ("/b", false), ("/c", true)]);
    }
}
