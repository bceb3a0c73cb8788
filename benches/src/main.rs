//! kiln's benchmark harness. Prints p50/p95/p99 tables with ratios against
//! peers measured in the same run. Run it inside the testbed on hosts without
//! hardware KVM (`tools/bench`).

mod api;
mod burst;
mod chart;
mod child;
mod clones;
mod compare;
mod density;
mod diag;
mod exec;
mod fanout;
mod image;
mod peer;
mod procmem;
mod quick;
mod report;
mod restore;
mod results;
mod root_move;
mod serve;
mod stats;
mod stream;
mod transfer;
mod vm;
mod vsock;
mod warm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use peer::{firecracker::Firecracker, kiln::KilnVmm, qemu::QemuMicrovm, Peer, PeerCmdline};

/// kiln benchmark harness.
#[derive(Parser)]
#[command(name = "kiln-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cold boots: VMM start to guest userspace, and to the agent's first pong.
    Boot(BootArgs),
    /// Exec latency of tiny Python / Node / shell programs on a booted VM.
    Exec(ExecArgs),
    /// Long vsock streams (exec stdout), kiln and QEMU microvm alternating.
    Stream(StreamArgs),
    /// The daemon's API through `kiln serve`: warm vs cold create -> echo,
    /// API overhead over a direct agent exec, concurrent creates, RSS per
    /// pooled VM.
    Api(api::ApiArgs),
    /// Runs one command in a kiln VM and in a QEMU microvm (same guest) and
    /// prints both outputs, to compare what each VMM exposes.
    Compare(CompareArgs),
    /// Snapshot restore to agent ready against cold boot to agent ready,
    /// alternating in one run; the restored clones' RSS.
    Restore(restore::RestoreArgs),
    /// Runtime images compared: cold boot to agent ready and host memory
    /// (PSS) idle after boot and after one exec, images alternating.
    Image(ImageArgs),
    /// Clone fan-out: 10 and 50 clones of one snapshot restored at once;
    /// per-clone and all-ready times, failures, memory per clone.
    Fanout(fanout::FanoutArgs),
    /// Warm create from a clone pool vs a booted pool, and cold create,
    /// through two `kiln serve` daemons alternating.
    Warm(warm::WarmArgs),
    /// Density: idle VMs held at once (clones vs booted) until a memory
    /// budget or a count.
    Density(density::DensityArgs),
    /// The short run of every scenario (under two minutes of testbed time).
    Quick(quick::QuickArgs),
    /// An SVG of box plots from results files.
    Chart(chart::ChartArgs),
}

#[derive(clap::Args)]
struct ImageArgs {
    /// Boots per image.
    #[arg(long, default_value_t = 5)]
    n: usize,
    /// Guest kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initramfs: PathBuf,
    /// A runtime image (repeat to compare several).
    #[arg(long = "image", required = true)]
    images: Vec<PathBuf>,
    /// kiln-vmm binary.
    #[arg(long)]
    kiln_vmm: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 512)]
    mem_mib: u32,
    /// The exec after boot (must print 1).
    #[arg(last = true, default_values_t = ["python3".to_string(), "-c".to_string(), "print(1)".to_string()])]
    exec: Vec<String>,
}

fn image(args: ImageArgs) -> Result<()> {
    let results = image::ImageBench {
        vmm: args.kiln_vmm,
        kernel: args.kernel,
        initramfs: args.initramfs,
        images: args.images,
        mem_mib: args.mem_mib,
        n: args.n,
        exec: args.exec.clone(),
    }
    .run()?;
    println!(
        "runtime images, {} boots each (alternating), {} MiB; memory is the median PSS of the VM's processes {:?} after boot and after {:?}",
        args.n,
        args.mem_mib,
        image::SETTLE,
        args.exec
    );
    print!("{}", image::table(&results));
    Ok(())
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    vms: VmArgs,
    /// A runtime image attached to both guests (their /dev/vda, the
    /// sandbox root), so programs from it run under both VMMs.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The command (argv) to run in both guests.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

fn compare(args: CompareArgs) -> Result<()> {
    let vms = &args.vms;
    if let Some(vmm) = &vms.kiln_vmm {
        let images: Vec<PathBuf> = args.image.iter().cloned().collect();
        let spec = vm::spec(vmm, &vms.kernel, &vms.initramfs, vms.mem_mib, &images);
        println!("===== kiln\n{}", compare::in_kiln(&spec, &args.argv)?);
    }
    if let Some(mut q) = vms.qemu_microvm(1) {
        q.image.clone_from(&args.image);
        println!(
            "===== qemu microvm\n{}",
            compare::in_qemu(&q, 3000, &args.argv)?
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct StreamArgs {
    /// Rounds; each round streams once per VMM and direction.
    #[arg(long, default_value_t = 3)]
    n: usize,
    /// MiB per stream.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Which way: out (guest stdout), in (guest stdin), or both alternating.
    #[arg(long, value_enum, default_value_t = Directions::Out)]
    direction: Directions,
    #[command(flatten)]
    vms: VmArgs,
    /// Longest one stream may take, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds without a byte moving after which a stream counts as stalled
    /// (the state is then recorded and the VMM killed).
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Seconds into each stream at which KVM's exits are counted by reason
    /// for one second.
    #[arg(long, default_value_t = 10)]
    profile_at_secs: u64,
    /// Where guest consoles are kept (one file per stream).
    #[arg(long, default_value = "stream-consoles")]
    console_dir: PathBuf,
}

/// The `--direction` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Directions {
    Out,
    In,
    Both,
}

impl Directions {
    fn list(self) -> Vec<stream::Direction> {
        match self {
            Directions::Out => vec![stream::Direction::Out],
            Directions::In => vec![stream::Direction::In],
            Directions::Both => vec![stream::Direction::Out, stream::Direction::In],
        }
    }
}

/// The guest and the VMMs that boot it, for benchmarks that compare kiln
/// with the QEMU microvm peer.
#[derive(clap::Args)]
struct VmArgs {
    /// Guest kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initramfs: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
    /// kiln-vmm binary (omit to skip kiln).
    #[arg(long)]
    kiln_vmm: Option<PathBuf>,
    /// QEMU binary for the microvm peer (omit to skip the peer).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// QEMU firmware directory (-L), holding qboot.rom.
    #[arg(long)]
    qemu_data: Option<PathBuf>,
    /// Firecracker binary for the Firecracker peer (omit to skip it).
    #[arg(long)]
    firecracker: Option<PathBuf>,
}

impl VmArgs {
    /// The QEMU microvm peer, when `--qemu` was given.
    fn qemu_microvm(&self, vcpus: u8) -> Option<QemuMicrovm> {
        self.qemu_microvm_with(vcpus, PeerCmdline::SameAsKiln)
    }

    /// The QEMU microvm peer booting with the command line `cmdline`.
    fn qemu_microvm_with(&self, vcpus: u8, cmdline: PeerCmdline) -> Option<QemuMicrovm> {
        self.qemu.as_ref().map(|qemu| QemuMicrovm {
            qemu: qemu.clone(),
            data_dir: self.qemu_data.clone(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            vcpus,
            mem_mib: self.mem_mib,
            image: None,
            cmdline,
        })
    }
}

fn stream(args: StreamArgs) -> Result<()> {
    diag::mount_kernel_fs();
    if !diag::arm_kvm_trace() {
        eprintln!("note: no KVM tracing here; stall reports will lack the guest RIP");
    }
    if std::env::var_os("KILN_LOG").is_none() {
        // kiln-vmm inherits it: connection lifecycle lines (a few per
        // connection) say how a broken stream ended.
        std::env::set_var("KILN_LOG", "warn,kiln_vmm::devices::virtio::vsock=debug");
    }
    std::fs::create_dir_all(&args.console_dir)
        .with_context(|| format!("creating {}", args.console_dir.display()))?;
    let vms = &args.vms;
    let vm_spec = vms
        .kiln_vmm
        .as_ref()
        .map(|vmm| vm::spec(vmm, &vms.kernel, &vms.initramfs, vms.mem_mib, &[]));
    let qemu = vms.qemu_microvm(1);
    if vm_spec.is_none() && qemu.is_none() {
        bail!("nothing to measure: give at least one VMM");
    }
    let mut results: Vec<stream::StreamResult> = Vec::new();
    let mut k = 0;
    for i in 0..args.n {
        for direction in args.direction.list() {
            let spec = stream::StreamSpec {
                bytes: args.mib << 20,
                direction,
                deadline: std::time::Duration::from_secs(args.timeout),
                stall: std::time::Duration::from_secs(args.stall_secs),
                profile_at: Some(std::time::Duration::from_secs(args.profile_at_secs)),
            };
            let mut round = Vec::new();
            if let Some(vm_spec) = &vm_spec {
                let console = stream::console_path(&args.console_dir, "kiln", k);
                round.push(
                    stream::kiln(vm_spec, &spec, &console)
                        .unwrap_or_else(|e| stream::StreamResult::failed("kiln", &spec, &e)),
                );
            }
            if let Some(q) = &qemu {
                let console = stream::console_path(&args.console_dir, "qemu", k);
                round.push(
                    stream::qemu(q, 2000 + k as u32, &spec, &console).unwrap_or_else(|e| {
                        stream::StreamResult::failed("qemu microvm", &spec, &e)
                    }),
                );
            }
            for r in &round {
                eprintln!("#{i} {}", report::stream_line(r));
                if let Some(p) = &r.exit_profile {
                    eprintln!("   kvm exits in 1 s mid-stream: {p}");
                }
                for report in [&r.stall_report, &r.failure_detail].into_iter().flatten() {
                    eprintln!("{report}");
                }
            }
            results.extend(round);
            k += 1;
        }
    }
    println!(
        "{} MiB streams, {} round(s); kvm exits and injected interrupts are the testbed kernel's counters over each stream",
        args.mib, args.n
    );
    print!("{}", report::stream_table(&results));
    print!("{}", report::stream_summary(&results));
    Ok(())
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Runs per case.
    #[arg(long, default_value_t = 30)]
    n: usize,
    /// Guest kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initramfs: PathBuf,
    /// Runtime image (python-node); without it only the shell case runs.
    #[arg(long)]
    image: Option<PathBuf>,
    /// kiln-vmm binary.
    #[arg(long)]
    kiln_vmm: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 512)]
    mem_mib: u32,
    /// File sizes in MiB to upload and download (comma-separated; empty to skip).
    #[arg(long, value_delimiter = ',', default_value = "10,200")]
    transfer_mib: Vec<u64>,
    /// Rounds per transfer size.
    #[arg(long, default_value_t = 5)]
    transfer_n: usize,
}

fn exec(args: ExecArgs) -> Result<()> {
    let results = exec::ExecBench {
        vmm: args.kiln_vmm,
        kernel: args.kernel,
        initramfs: args.initramfs,
        image: args.image,
        mem_mib: args.mem_mib,
        n: args.n,
        transfer_mib: args.transfer_mib,
        transfer_n: args.transfer_n,
    }
    .run()?;
    println!(
        "exec latency on one booted VM, {} runs per case after a warm-up",
        args.n
    );
    print!("{}", report::exec_table(&results.cases));
    if !results.transfers.is_empty() {
        println!(
            "\nfile transfers on the same VM, {} rounds per size after a warm-up",
            args.transfer_n
        );
        print!("{}", report::transfer_table(&results.transfers));
    }
    Ok(())
}

#[derive(clap::Args)]
struct BootArgs {
    /// Boots per VMM (rounds per VMM with `--parallel`).
    #[arg(long, default_value_t = 30)]
    n: usize,
    /// vCPUs per VM.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// VMs booted at once per round (each round one VMM, alternating).
    /// Above 1, failed boots are counted and reported instead of ending
    /// the run: the side-by-side failure rate under concurrent boots.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Also boot kiln-vmm with `--no-jail`, interleaved, to measure what
    /// the jail costs.
    #[arg(long)]
    jail_compare: bool,
    /// Also boot kiln-vmm with `--no-huge-pages`, interleaved, to measure
    /// what huge-page guest RAM gains.
    #[arg(long)]
    pages_compare: bool,
    /// Another kiln-vmm build (say, main's) booted interleaved as
    /// `kiln-baseline`: a change's before and after in one run.
    #[arg(long, value_name = "PATH")]
    baseline_kiln_vmm: Option<PathBuf>,
    /// Also boot each peer with its own minimal command line (console,
    /// reset, panic) instead of kiln's base arguments, interleaved: what
    /// those arguments are worth to the peer.
    #[arg(long)]
    peer_args_compare: bool,
    #[command(flatten)]
    vms: VmArgs,
}

/// In the testbed (a bare initramfs, run as root) mounts cgroup v2, so the
/// jail's cgroup step is part of what is measured.
fn testbed_cgroup2() -> Result<()> {
    if std::env::var_os("KILN_TESTBED").is_none() || kiln_vmm::jail::cgroup2_mount().is_ok() {
        return Ok(());
    }
    // SAFETY: constant C strings; the testbed runs the bench as root.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            c"/sys/fs/cgroup".as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!("mounting cgroup2: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn boot(args: BootArgs) -> Result<()> {
    let mut peers: Vec<Box<dyn Peer>> = Vec::new();
    let scratch = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let vms = &args.vms;
    let kiln = |vmm: &PathBuf, no_jail, baseline, small_pages| KilnVmm {
        vmm: vmm.clone(),
        kernel: vms.kernel.clone(),
        initramfs: vms.initramfs.clone(),
        vcpus: args.vcpus,
        mem_mib: vms.mem_mib,
        scratch: scratch.clone(),
        no_jail,
        baseline,
        small_pages,
    };
    if let Some(vmm) = &vms.kiln_vmm {
        peers.push(Box::new(kiln(vmm, false, false, false)));
        if args.jail_compare {
            testbed_cgroup2()?;
            peers.push(Box::new(kiln(vmm, true, false, false)));
        }
        if args.pages_compare {
            peers.push(Box::new(kiln(vmm, false, false, true)));
        }
    }
    if let Some(vmm) = &args.baseline_kiln_vmm {
        peers.push(Box::new(kiln(vmm, false, true, false)));
    }
    let cmdlines: &[PeerCmdline] = if args.peer_args_compare {
        &[PeerCmdline::SameAsKiln, PeerCmdline::Minimal]
    } else {
        &[PeerCmdline::SameAsKiln]
    };
    for &cmdline in cmdlines {
        if let Some(qemu) = vms.qemu_microvm_with(args.vcpus, cmdline) {
            peers.push(Box::new(qemu));
        }
        if let Some(binary) = &vms.firecracker {
            peers.push(Box::new(Firecracker {
                binary: binary.clone(),
                kernel: vms.kernel.clone(),
                initramfs: vms.initramfs.clone(),
                vcpus: args.vcpus,
                mem_mib: vms.mem_mib,
                scratch: scratch.clone(),
                cmdline,
            }));
        }
    }
    if peers.is_empty() {
        bail!("nothing to measure: give at least one VMM");
    }
    // Round by round the VMMs take turns, so drift in the machine's speed
    // hits them alike; a failed boot is counted, not the end of the run.
    let results = burst::run(&peers, args.n, args.parallel);
    let _ = std::fs::remove_dir_all(&scratch);
    if args.parallel > 1 {
        println!(
            "cold boots in bursts of {} at once, {} rounds per VMM, {} vCPU, {} MiB; ratios are p50 against the first row of each metric",
            args.parallel, args.n, args.vcpus, args.vms.mem_mib
        );
    } else {
        println!(
            "cold boot, {} runs per VMM, {} vCPU, {} MiB; ratios are p50 against the first row of each metric",
            args.n, args.vcpus, args.vms.mem_mib
        );
    }
    let table: Vec<_> = results
        .iter()
        .map(|r| (r.name.clone(), r.samples.clone()))
        .collect();
    print!("{}", report::boot_table(&table));
    print!("{}", burst::failure_report(&results, peer::BOOT_TIMEOUT));
    boot_results(&args, &results).print_json();
    Ok(())
}

/// The boot results as series (one per VMM and metric) for the JSON line.
fn boot_results(args: &BootArgs, results: &[burst::BurstResult]) -> results::Results {
    let mut out = results::Results::new(
        "boot",
        serde_json::json!({"n": args.n, "parallel": args.parallel, "vcpus": args.vcpus, "mem_mib": args.vms.mem_mib}),
    );
    type Metric = fn(&peer::BootSample) -> std::time::Duration;
    let metrics: [(&str, Metric); 2] = [
        ("spawn -> agent pong", |s| s.ping),
        ("spawn -> userspace", |s| s.userspace),
    ];
    for (metric, get) in metrics {
        let mut base = None;
        for r in results {
            let mut series = results::Series::new("boot", &r.name, metric);
            series.samples = r.samples.iter().map(get).collect();
            series.failures = r.failures.len();
            series.base = base;
            let i = out.push(series);
            base = base.or(Some(i));
        }
    }
    out
}

fn main() -> Result<()> {
    raise_open_files_limit();
    dispatch(Cli::parse().command)
}

/// Raises the soft limit on open files to the hard one: hundreds of VMs
/// held at once (density, fan-out) take a few descriptors each.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Runs one subcommand.
fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Boot(args) => boot(args),
        Command::Exec(args) => exec(args),
        Command::Stream(args) => stream(args),
        Command::Compare(args) => compare(args),
        Command::Api(args) => api::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Image(args) => image(args),
        Command::Fanout(args) => fanout::run(args),
        Command::Warm(args) => warm::run(args),
        Command::Density(args) => density::run(args),
        Command::Quick(args) => quick::run(args),
        Command::Chart(args) => chart::run(args),
    }
}
