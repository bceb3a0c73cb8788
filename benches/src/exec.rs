//! Exec latency on an already-booted sandbox: request sent to result
//! received, for tiny Python, Node and shell programs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_agent::client;
use kiln_agent::protocol::ExecRequest;

use crate::stats::{summarize, Summary};
use crate::transfer::{self, TransferResult};
use crate::vm::{self, BenchVm};

/// What to boot for the exec benchmark.
pub struct ExecBench {
    /// `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Runtime image (python-node); without it only the shell case runs.
    pub image: Option<PathBuf>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Runs per case.
    pub n: usize,
    /// File sizes (MiB) to upload and download after the exec cases.
    pub transfer_mib: Vec<u64>,
    /// Rounds per transfer size.
    pub transfer_n: usize,
}

/// Everything one exec benchmark run measured.
pub struct ExecReport {
    /// Exec latency per case.
    pub cases: Vec<CaseResult>,
    /// Upload and download times per file size.
    pub transfers: Vec<TransferResult>,
}

/// One measured case.
pub struct CaseResult {
    /// Case name (the command).
    pub name: String,
    /// Latency summary.
    pub summary: Summary,
}

/// Runs `argv` once; it must print `1`. Returns request-to-result time.
pub fn run_once(vm: &BenchVm, argv: &[&str]) -> Result<Duration> {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_ms: Some(120_000),
        ..Default::default()
    };
    let mut out = Vec::new();
    let start = Instant::now();
    let mut conn = vm.connect()?;
    conn.set_read_timeout(Some(Duration::from_secs(150)))?;
    let status = client::exec(&mut conn, &req, &[], |b| out.extend_from_slice(b), |_| {})?;
    let took = start.elapsed();
    if status.code != Some(0) || out != b"1\n" {
        bail!(
            "{argv:?} gave {status:?} with output {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(took)
}

impl ExecBench {
    /// Boots one VM and measures every case `n` times (after one warm-up),
    /// then the file transfers.
    pub fn run(&self) -> Result<ExecReport> {
        let drives: Vec<PathBuf> = self.image.iter().cloned().collect();
        let spec = vm::spec(
            &self.vmm,
            &self.kernel,
            &self.initramfs,
            self.mem_mib,
            &drives,
        );
        let vm = BenchVm::boot(&spec, Duration::from_secs(120))?;
        eprintln!("booted in {:?}", vm.spawned_at().elapsed());
        let mut cases: Vec<(&str, Vec<&str>)> =
            vec![("sh -c 'echo 1'", vec!["sh", "-c", "echo 1"])];
        if self.image.is_some() {
            cases.push(("python3 -c 'print(1)'", vec!["python3", "-c", "print(1)"]));
            cases.push((
                "node -e 'console.log(1)'",
                vec!["node", "-e", "console.log(1)"],
            ));
        }
        let mut results = Vec::new();
        for (name, argv) in cases {
            run_once(&vm, &argv).with_context(|| format!("warm-up of {name}"))?;
            let mut samples = Vec::with_capacity(self.n);
            for i in 0..self.n {
                samples.push(run_once(&vm, &argv).with_context(|| format!("{name} run {i}"))?);
            }
            if let Some(summary) = summarize(&samples) {
                eprintln!("{name}: p50 {:?}, p95 {:?}", summary.p50, summary.p95);
                results.push(CaseResult {
                    name: name.to_string(),
                    summary,
                });
            }
        }
        let mut transfers = Vec::new();
        for &mib in &self.transfer_mib {
            transfers.extend(transfer::measure(&vm, mib << 20, self.transfer_n)?);
        }
        vm.shutdown(Duration::from_secs(30))?;
        Ok(ExecReport {
            cases: results,
            transfers,
        })
    }
}
