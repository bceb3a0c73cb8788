//! File transfer throughput on an already-booted sandbox: upload and download
//! through the agent's files API, streamed (neither side holds the file).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_agent::client::files;

use crate::stats::{summarize, Summary};
use crate::vm::BenchVm;

/// Where the benchmark's file lives in the guest (on the tmpfs overlay).
const GUEST_PATH: &str = "/home/sandbox/kiln-bench.bin";

/// One measured transfer case.
pub struct TransferResult {
    /// "upload" or "download".
    pub direction: &'static str,
    /// Bytes per transfer.
    pub size: u64,
    /// Time per transfer, request to verified digest.
    pub summary: Summary,
}

/// Deterministic pseudo-random bytes (xorshift64), produced on demand so a
/// 200 MiB source costs no memory.
struct NoiseReader {
    left: u64,
    state: u64,
}

impl Read for NoiseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts what it is given and drops it.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An agent connection whose transfers fail after 180 s without progress.
fn transfer_conn(vm: &BenchVm) -> Result<std::os::unix::net::UnixStream> {
    let conn = vm.connect()?;
    conn.set_read_timeout(Some(Duration::from_secs(180)))?;
    conn.set_write_timeout(Some(Duration::from_secs(180)))?;
    Ok(conn)
}

fn upload(vm: &BenchVm, size: u64, seed: u64) -> Result<Duration> {
    let source = NoiseReader {
        left: size,
        state: seed | 1,
    };
    let start = Instant::now();
    let written = files::upload(&mut transfer_conn(vm)?, GUEST_PATH, Some(0o644), source)?;
    let took = start.elapsed();
    if written.size != size {
        bail!("upload wrote {} bytes, expected {size}", written.size);
    }
    Ok(took)
}

fn download(vm: &BenchVm, size: u64) -> Result<Duration> {
    let mut sink = CountingSink(0);
    let start = Instant::now();
    let got = files::download(&mut transfer_conn(vm)?, GUEST_PATH, &mut sink)?;
    let took = start.elapsed();
    if got.size != size || sink.0 != size {
        bail!(
            "download gave {} bytes ({} arrived), expected {size}",
            got.size,
            sink.0
        );
    }
    Ok(took)
}

fn remove(vm: &BenchVm) -> Result<()> {
    let mut stream = vm.connect()?;
    files::remove(&mut stream, GUEST_PATH, false).context("removing the benchmark file")
}

/// Uploads then downloads a `size`-byte file `n` times (after one warm-up
/// round); the file is removed after each round so the overlay stays empty.
pub fn measure(vm: &BenchVm, size: u64, n: usize) -> Result<Vec<TransferResult>> {
    let mut ups = Vec::with_capacity(n);
    let mut downs = Vec::with_capacity(n);
    for round in 0..=n {
        let up = upload(vm, size, round as u64 + 0x9e37_79b9)
            .with_context(|| format!("upload of {size} bytes, round {round}"))?;
        let down = download(vm, size)
            .with_context(|| format!("download of {size} bytes, round {round}"))?;
        remove(vm)?;
        eprintln!("{size} bytes round {round}: upload {up:?}, download {down:?}");
        if round > 0 {
            ups.push(up);
            downs.push(down);
        }
    }
    let mut results = Vec::new();
    for (direction, samples) in [("upload", ups), ("download", downs)] {
        if let Some(summary) = summarize(&samples) {
            results.push(TransferResult {
                direction,
                size,
                summary,
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_reader_yields_exactly_its_size_and_is_not_constant() {
        let mut r = NoiseReader {
            left: 1_000_003,
            state: 1,
        };
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 1_000_003);
        assert!(all.iter().filter(|&&b| b == all[0]).count() < 100_000);
    }
}
