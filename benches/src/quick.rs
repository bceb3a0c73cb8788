//! `kiln-bench quick`: every scenario once, small (a few runs each), to
//! show the harness runs end to end in under two minutes of testbed time.
//! Each scenario prints its own table and JSON line; a scenario that cannot
//! run is reported and the run fails at the end, whatever the timings.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

/// `kiln-bench quick` arguments.
#[derive(clap::Args)]
pub struct QuickArgs {
    /// The guest and the VMMs (kiln-vmm is required).
    #[command(flatten)]
    vms: crate::VmArgs,
    /// The `kiln` binary (for the daemon scenario).
    #[arg(long, default_value = "bin/kiln")]
    kiln: PathBuf,
}

/// The argv of each scenario of the quick run.
fn plan(a: &QuickArgs, kiln_vmm: &Path) -> Vec<Vec<OsString>> {
    let v = &a.vms;
    let guest = || -> Vec<OsString> {
        vec![
            "--kernel".into(),
            v.kernel.clone().into(),
            "--initramfs".into(),
            v.initramfs.clone().into(),
            "--mem-mib".into(),
            v.mem_mib.to_string().into(),
        ]
    };
    let vmm = || -> Vec<OsString> { vec!["--kiln-vmm".into(), kiln_vmm.into()] };
    let fc = || -> Vec<OsString> {
        v.firecracker
            .iter()
            .flat_map(|f| ["--firecracker".into(), f.clone().into()])
            .collect()
    };
    let words = |w: &[&str]| -> Vec<OsString> { w.iter().map(OsString::from).collect() };
    let mut boot = [words(&["boot", "--n", "2"]), guest(), vmm(), fc()].concat();
    if let Some(q) = &v.qemu {
        boot.extend(["--qemu".into(), q.clone().into()]);
    }
    if let Some(d) = &v.qemu_data {
        boot.extend(["--qemu-data".into(), d.clone().into()]);
    }
    vec![
        boot,
        [
            words(&["restore", "--n", "2", "--warmup", "1"]),
            guest(),
            vmm(),
            fc(),
        ]
        .concat(),
        [
            words(&["fanout", "--sizes", "10", "--rounds", "1", "--warmup", "0"]),
            guest(),
            vmm(),
        ]
        .concat(),
        [
            words(&["warm", "--n", "2", "--pool", "1", "--kiln"]),
            vec![a.kiln.clone().into()],
            guest(),
        ]
        .concat(),
        [
            words(&[
                "density",
                "--max-vms",
                "4",
                "--parallel",
                "4",
                "--timeout",
                "30",
            ]),
            guest(),
            vmm(),
        ]
        .concat(),
    ]
}

/// Runs the plan; fails when any scenario could not run.
pub fn run(args: QuickArgs) -> Result<()> {
    let Some(kiln_vmm) = &args.vms.kiln_vmm else {
        bail!("quick needs --kiln-vmm");
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for argv in plan(&args, kiln_vmm) {
        let name = argv[0].to_string_lossy().into_owned();
        let t = Instant::now();
        let outcome =
            crate::Cli::try_parse_from(std::iter::once(OsString::from("kiln-bench")).chain(argv))
                .map_err(anyhow::Error::new)
                .and_then(|cli| crate::dispatch(cli.command));
        eprintln!("quick: {name} took {:.1} s", t.elapsed().as_secs_f64());
        if let Err(e) = outcome {
            eprintln!("quick: {name} FAILED: {e:#}");
            failed.push(name);
        }
    }
    println!("quick run: {:.1} s in all", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("scenarios that could not run: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_planned_scenario_parses() {
        let args = QuickArgs {
            vms: crate::VmArgs {
                kernel: "k".into(),
                initramfs: "i".into(),
                mem_mib: 256,
                kiln_vmm: Some("v".into()),
                qemu: Some("q".into()),
                qemu_data: Some("d".into()),
                firecracker: Some("f".into()),
            },
            kiln: "bin/kiln".into(),
        };
        let plan = plan(&args, Path::new("v"));
        assert_eq!(plan.len(), 5);
        for argv in plan {
            let cli = crate::Cli::try_parse_from(
                std::iter::once(OsString::from("kiln-bench")).chain(argv.clone()),
            );
            assert!(cli.is_ok(), "{argv:?}: {:?}", cli.err());
        }
    }
}
