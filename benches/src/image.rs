//! What a runtime image costs a sandbox: cold boot to the agent's first
//! answer, then the host memory (PSS) of the VM's processes when idle after
//! boot and after one exec. Several images boot alternately in one run, so
//! the machine's drift hits them alike.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::exec::run_once;
use crate::procmem::{children_of, rss_split_kib};
use crate::stats::{summarize, Summary};
use crate::vm::{self, BenchVm};

/// How long a VM sits idle before its memory is read (the agent's boot
/// work and the first exec's exit settle).
pub const SETTLE: Duration = Duration::from_secs(3);

/// What to boot.
pub struct ImageBench {
    /// `kiln-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// The images compared, each attached read-only as /dev/vda.
    pub images: Vec<PathBuf>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Boots per image.
    pub n: usize,
    /// The exec run after boot (it must print `1`).
    pub exec: Vec<String>,
}

/// Host memory of one VM (supervisor and VMM), KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Guest RAM the guest touched.
    pub guest_kib: u64,
    /// kiln-vmm's own.
    pub own_kib: u64,
}

/// One image's samples.
pub struct ImageResult {
    /// The image.
    pub image: PathBuf,
    /// Spawn to the agent's first answer.
    pub boot: Option<Summary>,
    /// Memory idle after boot, one per boot.
    pub after_boot: Vec<Memory>,
    /// Memory idle after the exec, one per boot.
    pub after_exec: Vec<Memory>,
}

impl ImageBench {
    /// Boots every image `n` times, alternating.
    pub fn run(&self) -> Result<Vec<ImageResult>> {
        let argv: Vec<&str> = self.exec.iter().map(String::as_str).collect();
        let mut boots = vec![Vec::new(); self.images.len()];
        let mut after_boot = vec![Vec::new(); self.images.len()];
        let mut after_exec = vec![Vec::new(); self.images.len()];
        for i in 0..self.n {
            for (k, image) in self.images.iter().enumerate() {
                let spec = vm::spec(
                    &self.vmm,
                    &self.kernel,
                    &self.initramfs,
                    self.mem_mib,
                    std::slice::from_ref(image),
                );
                let vm = BenchVm::boot(&spec, Duration::from_secs(300))
                    .with_context(|| format!("{} boot {i}", image.display()))?;
                let boot = vm.spawned_at().elapsed();
                std::thread::sleep(SETTLE);
                let idle = self.memory(&vm);
                let took = run_once(&vm, &argv).with_context(|| format!("{argv:?}"))?;
                std::thread::sleep(SETTLE);
                let used = self.memory(&vm);
                eprintln!(
                    "{} #{i}: ready in {boot:?}; PSS idle {:.1} MiB, after {took:?} exec {:.1} MiB",
                    image.display(),
                    mib(idle.guest_kib + idle.own_kib),
                    mib(used.guest_kib + used.own_kib)
                );
                boots[k].push(boot);
                after_boot[k].push(idle);
                after_exec[k].push(used);
                vm.shutdown(Duration::from_secs(30))?;
            }
        }
        Ok(self
            .images
            .iter()
            .zip(boots.iter().zip(after_boot.into_iter().zip(after_exec)))
            .map(|(image, (boot, (after_boot, after_exec)))| ImageResult {
                image: image.clone(),
                boot: summarize(boot),
                after_boot,
                after_exec,
            })
            .collect())
    }

    /// The supervisor's and its VMM's memory.
    fn memory(&self, vm: &BenchVm) -> Memory {
        let guest = u64::from(self.mem_mib) * 1024;
        let mut pids = children_of(vm.pid());
        pids.push(vm.pid());
        let (guest_kib, own_kib) = pids.iter().fold((0, 0), |(g, o), &p| {
            let (pg, po) = rss_split_kib(p, guest);
            (g + pg, o + po)
        });
        Memory { guest_kib, own_kib }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The median of `samples` (the upper one of an even count).
fn median(samples: &[Memory]) -> Option<Memory> {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|m| m.guest_kib + m.own_kib);
    sorted.get(sorted.len() / 2).copied()
}

/// One line per image: boot times and median memory.
pub fn table(results: &[ImageResult]) -> String {
    let mut out = format!(
        "{:<40} {:>9} {:>9} {:>9}  {:>26}  {:>26}\n",
        "image", "boot p50", "min", "max", "PSS idle (guest + own)", "PSS after exec"
    );
    let mem = |m: Option<Memory>| match m {
        Some(m) => format!(
            "{:.1} MiB ({:.1} + {:.1})",
            mib(m.guest_kib + m.own_kib),
            mib(m.guest_kib),
            mib(m.own_kib)
        ),
        None => "-".into(),
    };
    for r in results {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        let (p50, min, max) = match r.boot {
            Some(s) => (ms(s.p50), ms(s.min), ms(s.max)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<40} {p50:>9} {min:>9} {max:>9}  {:>26}  {:>26}\n",
            r.image.display(),
            mem(median(&r.after_boot)),
            mem(median(&r.after_exec)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_table() {
        let m = |g, o| Memory {
            guest_kib: g,
            own_kib: o,
        };
        let med = median(&[m(300, 10), m(100, 10), m(200, 10)]).expect("median");
        assert_eq!(med.guest_kib, 200);
        assert!(median(&[]).is_none());
        let t = table(&[ImageResult {
            image: PathBuf::from("a.erofs"),
            boot: summarize(&[Duration::from_millis(1500)]),
            after_boot: vec![m(2048, 1024)],
            after_exec: vec![],
        }]);
        assert!(
            t.contains("a.erofs") && t.contains("1500 ms") && t.contains("3.0 MiB (2.0 + 1.0)")
        );
        assert!(t
            .lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with('-')));
    }
}
