//! `kiln-bench api`: the daemon's API, measured through `kiln serve` on the
//! same guest: create -> first `echo` result from a warm pool and with
//! pooling off, the API's overhead over a direct agent exec on the same
//! VM, concurrent creates against pools of different sizes, host memory
//! (PSS) per idle pooled VM, split into guest memory and kiln-vmm's own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kiln::model::SandboxSpec;
use kiln::Kiln;
use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, AGENT_VSOCK_PORT};
use kiln_vmm::vm::hybrid_vsock;

use crate::procmem::{parent_of, rss_split_kib};
use crate::serve::{create_echo, wait_pool as wait_ready, Serve, ServeConfig, TEMPLATE};
use crate::stats::{summarize, Summary};

/// `kiln-bench api` arguments.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The `kiln` binary (runs `kiln serve`).
    #[arg(long, default_value = "bin/kiln")]
    kiln: PathBuf,
    /// Guest kernel.
    #[arg(long, default_value = "guest/vmlinux")]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long, default_value = "guest/initramfs.cpio")]
    initramfs: PathBuf,
    /// Memory per VM, MiB (untouched guest memory costs the host nothing).
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
    /// Samples per latency case.
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Pool sizes for the concurrent-create case (creates = the last one).
    #[arg(long, value_delimiter = ',', default_value = "4,50")]
    pools: Vec<u32>,
    /// Concurrent creates.
    #[arg(long, default_value_t = 50)]
    concurrent: usize,
}

/// Create -> `echo` result, `n` times; with `pool` > 0 each create waits
/// for a full pool first (a warm hit).
async fn create_to_echo(kiln: &Kiln, pool: u32, n: usize) -> Result<Vec<Duration>> {
    kiln.set_pool_target(TEMPLATE, pool).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        if pool > 0 {
            wait_ready(kiln, pool).await?;
        }
        samples.push(create_echo(kiln).await?.0);
    }
    Ok(samples)
}

/// The same `echo` through the API and straight to the agent, same VM.
async fn api_overhead(
    kiln: &Kiln,
    serve: &Serve,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    kiln.set_pool_target(TEMPLATE, 0).await?;
    let sandbox = kiln.sandboxes().create(SandboxSpec::default()).await?;
    let runs = std::fs::read_dir(serve.state.join("vms"))?
        .flatten()
        .map(|e| e.path().join("vsock.sock"))
        .filter(|p| p.exists())
        .collect::<Vec<_>>();
    let [uds] = runs.as_slice() else {
        bail!("expected one VM, found {}", runs.len());
    };
    let (mut api, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let start = Instant::now();
        sandbox.exec(["echo", "1"]).output().await?;
        api.push(start.elapsed());
        let uds = uds.clone();
        let took = tokio::task::spawn_blocking(move || -> Result<Duration> {
            let start = Instant::now();
            let mut s = hybrid_vsock::connect(&uds, AGENT_VSOCK_PORT, Duration::from_secs(30))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            let req = ExecRequest {
                argv: vec!["echo".into(), "1".into()],
                timeout_ms: Some(30_000),
                ..ExecRequest::default()
            };
            client::exec(&mut s, &req, &[], |_| {}, |_| {})?;
            Ok(start.elapsed())
        })
        .await??;
        direct.push(took);
    }
    sandbox.delete().await?;
    Ok((api, direct))
}

/// `count` creates at once against a pool of `pool`; per-create latency
/// and the wall time of all.
async fn concurrent(
    kiln: &Kiln,
    pool: u32,
    count: usize,
) -> Result<(Vec<Duration>, Duration, usize)> {
    kiln.set_pool_target(TEMPLATE, pool).await?;
    wait_ready(kiln, pool).await?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let kiln = kiln.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let s = kiln.sandboxes().create(SandboxSpec::default()).await?;
                let warm = s.cached_info().launch_type == kiln::model::LaunchType::Warm;
                Ok::<_, kiln::Error>((t.elapsed(), warm, s))
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut sandboxes = Vec::new();
    let mut warm = 0;
    for t in tasks {
        let (took, w, s) = t.await??;
        samples.push(took);
        warm += usize::from(w);
        sandboxes.push(s);
    }
    let wall = start.elapsed();
    kiln.set_pool_target(TEMPLATE, 0).await?;
    for s in sandboxes {
        s.delete().await?;
    }
    Ok((samples, wall, warm))
}

fn line(name: &str, s: Option<Summary>) -> String {
    match s {
        None => format!("{name:<44} (no samples)"),
        Some(s) => format!(
            "{name:<44} n={:<3} p50 {:>8.1} ms  p95 {:>8.1} ms  p99 {:>8.1} ms",
            s.n,
            s.p50.as_secs_f64() * 1e3,
            s.p95.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3
        ),
    }
}

/// Runs every case and prints the report.
pub fn run(a: ApiArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let serve = Serve::start(
        &ServeConfig {
            kiln: &a.kiln,
            kernel: &a.kernel,
            initramfs: &a.initramfs,
            mem_mib: a.mem_mib,
            // The daemon's default; `warm` compares clones with booted VMs.
            from_snapshot: true,
            max_vms: 256,
        },
        &dir,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let kiln = serve.connect().await?;
        let mut out = vec![format!(
            "kiln-bench api: {} MiB guests, {} samples per case",
            a.mem_mib, a.n
        )];
        let warm = create_to_echo(&kiln, 2, a.n).await?;
        out.push(line("create -> echo, warm pool (2)", summarize(&warm)));
        let cold = create_to_echo(&kiln, 0, a.n).await?;
        out.push(line("create -> echo, pooling off (cold)", summarize(&cold)));
        if let (Some(w), Some(c)) = (summarize(&warm), summarize(&cold)) {
            out.push(format!(
                "  warm p50 is {:.1}x faster than cold",
                c.p50.as_secs_f64() / w.p50.as_secs_f64()
            ));
        }
        let (api, direct) = api_overhead(&kiln, &serve, a.n).await?;
        out.push(line("echo through the API (same VM)", summarize(&api)));
        out.push(line(
            "echo straight to the agent (same VM)",
            summarize(&direct),
        ));
        if let (Some(x), Some(y)) = (summarize(&api), summarize(&direct)) {
            out.push(format!(
                "  API overhead at p50: {:.1} ms",
                (x.p50.as_secs_f64() - y.p50.as_secs_f64()) * 1e3
            ));
        }
        for &pool in &a.pools {
            let (samples, wall, warm) = concurrent(&kiln, pool, a.concurrent).await?;
            out.push(line(
                &format!("{} concurrent creates, pool of {pool}", a.concurrent),
                summarize(&samples),
            ));
            out.push(format!(
                "  all done in {:.1} ms; {warm} warm, {} cold",
                wall.as_secs_f64() * 1e3,
                a.concurrent - warm
            ));
        }
        let idle = a.pools.iter().copied().max().unwrap_or(4).max(1);
        kiln.set_pool_target(TEMPLATE, idle).await?;
        wait_ready(&kiln, idle).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        // A jailed VM is a supervisor plus its VMM child (same command
        // line): a VM is a process whose parent is not one of them.
        let pids = serve.vm_pids();
        let vms = pids
            .iter()
            .filter(|&&p| parent_of(p).is_none_or(|pp| !pids.contains(&pp)))
            .count()
            .max(1);
        let guest_kib = u64::from(a.mem_mib) * 1024;
        let (guest, own) = pids.iter().fold((0, 0), |(g, o), &p| {
            let (pg, po) = rss_split_kib(p, guest_kib);
            (g + pg, o + po)
        });
        let mib = |kib: u64| kib as f64 / 1024.0 / vms as f64;
        out.push(format!(
            "host memory (PSS) per idle pooled VM: {:.1} MiB = guest memory touched {:.1} MiB + kiln-vmm's own {:.1} MiB (supervisor and VMM; {vms} VMs, {} processes, {:.1} MiB in all)",
            mib(guest + own),
            mib(guest),
            mib(own),
            pids.len(),
            (guest + own) as f64 / 1024.0
        ));
        anyhow::Ok(out)
    });
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
    for l in report? {
        println!("{l}");
    }
    Ok(())
}
