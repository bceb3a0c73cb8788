//! Warm create from clones vs from booted VMs (issue 12): two `kiln serve`
//! daemons with the same template, one with `[pool] from_snapshot = true`
//! (pools refill with restored clones), one with `false` (booted VMs),
//! samples alternating between them. Measured: API create -> first `echo`
//! result with a full pool (warm) and with pooling off (cold: the booted
//! daemon boots, the clone daemon restores a clone), and the ratio the
//! issue targets: warm from clones against a cold (booted) create.

use std::path::PathBuf;

use anyhow::Result;
use kiln::model::LaunchType;
use kiln::Kiln;
use serde_json::json;

use crate::results::{Results, Series};
use crate::serve::{create_echo, wait_pool, Serve, ServeConfig, TEMPLATE};

/// `kiln-bench warm` arguments.
#[derive(clap::Args)]
pub struct WarmArgs {
    /// The `kiln` binary (runs `kiln serve`).
    #[arg(long, default_value = "bin/kiln")]
    kiln: PathBuf,
    /// Guest kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initramfs: PathBuf,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
    /// Counted samples per case and daemon.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Warm pool size.
    #[arg(long, default_value_t = 2)]
    pool: u32,
}

/// One daemon under test.
struct Daemon {
    name: &'static str,
    serve: Serve,
    kiln: Kiln,
}

/// Creates -> echo once on `d`, adding it to `series` when `counted`;
/// `want` is the launch type the case must get (else it is a failure).
async fn sample(d: &Daemon, want: LaunchType, series: &mut Series, counted: bool) -> Result<()> {
    let outcome = create_echo(&d.kiln).await;
    let line = match outcome {
        Ok((t, got)) if got == want => {
            if counted {
                series.samples.push(t);
            }
            format!("{t:?}")
        }
        Ok((t, got)) => {
            series.failures += usize::from(counted);
            format!("{t:?} but {got:?}, wanted {want:?}: not counted")
        }
        Err(e) => {
            series.failures += usize::from(counted);
            format!("FAILED: {e:#}")
        }
    };
    eprintln!(
        "{} {:?}{}: {line}",
        d.name,
        want,
        if counted { "" } else { " (warm-up)" }
    );
    Ok(())
}

/// Runs the scenario and prints its results.
pub fn run(args: WarmArgs) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-bench-warm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = |name: &str, from_snapshot| {
        Serve::start(
            &ServeConfig {
                kiln: &args.kiln,
                kernel: &args.kernel,
                initramfs: &args.initramfs,
                mem_mib: args.mem_mib,
                from_snapshot,
                max_vms: 64,
            },
            &dir.join(name),
        )
    };
    let booted = start("booted", false)?;
    let clones = start("clones", true)?;
    let rt = crate::vm::runtime()?;
    let results = rt.block_on(async {
        let daemons = [
            Daemon {
                name: "kiln booted pool",
                kiln: booted.connect().await?,
                serve: booted,
            },
            Daemon {
                name: "kiln clone pool",
                kiln: clones.connect().await?,
                serve: clones,
            },
        ];
        let results = measure(&args, &daemons).await;
        for d in &daemons {
            let _ = d.kiln.set_pool_target(TEMPLATE, 0).await;
        }
        drop(daemons);
        results
    });
    let _ = std::fs::remove_dir_all(&dir);
    let results = results?;
    println!(
        "create -> first echo result through `kiln serve`, {} MiB, pool of {} when warm; the two daemons alternate sample by sample",
        args.mem_mib, args.pool
    );
    results.print();
    Ok(())
}

async fn measure(args: &WarmArgs, daemons: &[Daemon; 2]) -> Result<Results> {
    let mut results = Results::new(
        "warm",
        json!({"n": args.n, "pool": args.pool, "mem_mib": args.mem_mib}),
    );
    let cold_booted = results.push(Series::new(
        "cold create",
        daemons[0].name,
        "create -> echo",
    ));
    let cold_clone = results.push(
        Series::new("cold create", daemons[1].name, "create -> echo (a restore)")
            .against(cold_booted),
    );
    let warm_booted = results
        .push(Series::new("warm create", daemons[0].name, "create -> echo").against(cold_booted));
    let warm_clone = results
        .push(Series::new("warm create", daemons[1].name, "create -> echo").against(cold_booted));
    // The first cold create of the clone daemon boots and starts its
    // template snapshot; nothing is counted before it is ready.
    for d in daemons {
        d.kiln.set_pool_target(TEMPLATE, 0).await?;
    }
    for (d, s) in daemons.iter().zip([cold_booted, cold_clone]) {
        sample(d, LaunchType::Cold, &mut results.series[s], false).await?;
    }
    daemons[1].serve.wait_snapshot().await?;
    for i in 0..=args.n {
        for (d, s) in daemons.iter().zip([cold_booted, cold_clone]) {
            sample(d, LaunchType::Cold, &mut results.series[s], i > 0).await?;
        }
    }
    for d in daemons {
        d.kiln.set_pool_target(TEMPLATE, args.pool).await?;
    }
    for i in 0..=args.n {
        for (d, s) in daemons.iter().zip([warm_booted, warm_clone]) {
            // Both pools full: a refill in one daemon does not slow the
            // other's sample more than its own.
            for other in daemons {
                wait_pool(&other.kiln, args.pool).await?;
            }
            sample(d, LaunchType::Warm, &mut results.series[s], i > 0).await?;
        }
    }
    if let (Some(w), Some(c)) = (
        crate::stats::summarize(&results.series[warm_clone].samples),
        crate::stats::summarize(&results.series[cold_booted].samples),
    ) {
        results.figure(
            "warm create from clones vs cold create (booted), p50 (target at most 0.05)",
            w.p50.as_secs_f64() / c.p50.as_secs_f64().max(f64::MIN_POSITIVE),
            "x",
        );
    }
    Ok(results)
}
