//! Boots in rounds: each round starts `parallel` VMs (often 1) of one VMM at once and
//! waits for every agent, the VMMs alternating round by round. A failed boot
//! is counted and reported (with its error) instead of ending the run, so the
//! failure rate of each VMM under concurrent boots is measured side by side.

use std::time::Duration;

use crate::peer::{BootSample, Peer};

/// One VMM's bursts: what booted and how each failure read.
pub struct BurstResult {
    /// VMM name.
    pub name: String,
    /// Boots that reached a ping.
    pub samples: Vec<BootSample>,
    /// `(run number, error)` of each failed boot.
    pub failures: Vec<(usize, String)>,
}

/// Runs `rounds` rounds of `parallel` concurrent boots per peer.
pub fn run(peers: &[Box<dyn Peer>], rounds: usize, parallel: usize) -> Vec<BurstResult> {
    let mut results: Vec<BurstResult> = peers
        .iter()
        .map(|p| BurstResult {
            name: p.name(),
            samples: Vec::new(),
            failures: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for (peer, result) in peers.iter().zip(results.iter_mut()) {
            let outcomes: Vec<(usize, Result<BootSample, String>)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..parallel)
                    .map(|j| {
                        let i = round * parallel + j;
                        let peer = &**peer;
                        s.spawn(move || (i, peer.boot_once(i).map_err(|e| e.to_string())))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| (usize::MAX, Err("boot thread panicked".into())))
                    })
                    .collect()
            });
            for (i, outcome) in outcomes {
                match outcome {
                    Ok(s) => {
                        eprintln!(
                            "{} #{i}: userspace {:?}, ping {:?}",
                            result.name, s.userspace, s.ping
                        );
                        result.samples.push(s);
                    }
                    Err(e) => {
                        eprintln!("{} #{i}: FAILED: {e}", result.name);
                        result.failures.push((i, e));
                    }
                }
            }
        }
    }
    results
}

/// Failures per VMM, one line each, then each failure's error.
pub fn failure_report(results: &[BurstResult], timeout: Duration) -> String {
    let mut out = String::new();
    for r in results {
        let total = r.samples.len() + r.failures.len();
        out.push_str(&format!(
            "{}: {} of {total} boots failed (boot timeout {timeout:?})\n",
            r.name,
            r.failures.len()
        ));
        for (i, e) in &r.failures {
            out.push_str(&format!("  #{i}: {e}\n"));
        }
    }
    out
}
