//! Per-thread seccomp filters: each kind of kiln-vmm thread
//! ([`ThreadKind`]) installs its own filter before it does its job (a vCPU
//! thread before its first `KVM_RUN`), allowing only the syscalls, and
//! where it matters the argument values (ioctl numbers, mmap protections,
//! socket families), that the thread needs. The tables live in one file
//! per architecture (`x86_64.rs`), each entry with its reason.
//!
//! A few syscalls that library code makes lazily and copes with failing
//! (`Refused`: glibc's malloc opening a /proc file) return `EACCES`
//! instead, through a second, tiny filter stacked under the first.
//! Any other forbidden syscall traps; the SIGSYS handler (`report.rs`) writes
//! `kiln-vmm: seccomp violation: syscall N in the K thread` to stderr and
//! the process dies of SIGSYS.

mod report;
pub mod rules;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

pub use rules::{Allowed, Refused, Runtime, ThreadKind, REFUSED_ERRNO};

/// How long a spawner waits for a new thread to report its filter.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A table entry could not be turned into BPF.
    #[error("cannot build the {kind} thread's seccomp filter: {source}")]
    Build {
        /// Thread kind.
        kind: &'static str,
        /// Underlying error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (no seccomp support, or no_new_privs).
    #[error("cannot install the {kind} thread's seccomp filter: {source}")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// Underlying error.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS reporter could not be installed.
    #[error("cannot install the seccomp violation reporter: {0}")]
    Handler(#[source] io::Error),
    /// A thread could not be started or did not report its filter.
    #[error("thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// The compiled filters of every thread kind, ready to install: the
/// refusals (`Errno` on match, else allow) then the allow list (allow on
/// match, else trap). Stacked filters take the strictest answer, so a
/// refused syscall, allowed by the list, fails with its errno.
#[derive(Debug)]
pub struct ThreadFilters {
    programs: BTreeMap<ThreadKind, Vec<BpfProgram>>,
}

/// Whether this kernel has seccomp (a syscall, so it also answers inside
/// the jail, where there is no /proc).
pub fn kernel_supports_seccomp() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers; EINVAL means no seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Every syscall `kind` may make (the architecture's table).
pub fn allowed(kind: ThreadKind, rt: &Runtime) -> Vec<Allowed> {
    arch::allowed(kind, rt)
}

/// The syscalls `kind` may attempt but that fail with [`REFUSED_ERRNO`].
pub fn refused(kind: ThreadKind) -> Vec<Refused> {
    arch::refused(kind)
}

/// The table entries as seccompiler rules: one entry per syscall, any
/// unconditional entry winning over argument checks.
fn rule_map(
    list: &[Allowed],
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for entry in list {
        let slot = map.entry(entry.syscall).or_insert_with(|| Some(Vec::new()));
        if entry.when.is_empty() {
            *slot = None;
            continue;
        }
        let Some(rules) = slot else { continue };
        for group in &entry.when {
            let conditions = group
                .iter()
                .map(|c| {
                    let len = if c.dword {
                        SeccompCmpArgLen::Dword
                    } else {
                        SeccompCmpArgLen::Qword
                    };
                    let op = if c.mask == u64::MAX {
                        SeccompCmpOp::Eq
                    } else {
                        SeccompCmpOp::MaskedEq(c.mask)
                    };
                    SeccompCondition::new(c.index, len, op, c.value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(SeccompRule::new(conditions)?);
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

impl ThreadFilters {
    /// Compiles every kind's filter for these run-time values.
    pub fn compile(rt: &Runtime) -> Result<Self, SeccompError> {
        Self::compile_kinds(rt, &ThreadKind::ALL)
    }

    /// Compiles the filters of `kinds` only (a process never installs the
    /// others: the supervisor has one thread kind, the VMM the rest).
    pub fn compile_kinds(rt: &Runtime, kinds: &[ThreadKind]) -> Result<Self, SeccompError> {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|source| {
            SeccompError::Build {
                kind: "any",
                source,
            }
        })?;
        let mut programs = BTreeMap::new();
        for &kind in kinds {
            let build = |source| SeccompError::Build {
                kind: kind.name(),
                source,
            };
            let refused = refused(kind);
            let mut list = allowed(kind, rt);
            list.extend(refused.iter().map(|r| rules::any(r.syscall, r.why)));
            let mut stack = Vec::new();
            if !refused.is_empty() {
                let rules = refused.iter().map(|r| (r.syscall, Vec::new())).collect();
                let errno = SeccompAction::Errno(REFUSED_ERRNO);
                let filter =
                    SeccompFilter::new(rules, SeccompAction::Allow, errno, arch).map_err(build)?;
                stack.push(filter.try_into().map_err(build)?);
            }
            let rules = rule_map(&list).map_err(build)?;
            let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
                .map_err(build)?;
            stack.push(filter.try_into().map_err(build)?);
            programs.insert(kind, stack);
        }
        Ok(ThreadFilters { programs })
    }

    /// The filters of this VMM process's threads: its pid and vCPU kick
    /// signal.
    pub fn for_vmm() -> Result<Self, SeccompError> {
        let kinds: Vec<ThreadKind> = ThreadKind::ALL
            .into_iter()
            .filter(|k| *k != ThreadKind::Supervisor)
            .collect();
        Self::compile_kinds(
            &Runtime {
                pid: u64::from(std::process::id()),
                kick_signal: crate::vcpu::kick::kick_signal() as u64,
                child: None,
            },
            &kinds,
        )
    }

    /// Number of BPF instructions in `kind`'s filters.
    pub fn len(&self, kind: ThreadKind) -> usize {
        self.programs
            .get(&kind)
            .map_or(0, |stack| stack.iter().map(Vec::len).sum())
    }

    /// Installs `kind`'s filter on the calling thread (and sets
    /// `no_new_privs`, which seccomp requires). Irreversible.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let stack = self.programs.get(&kind).ok_or(SeccompError::Install {
            kind: kind.name(),
            source: seccompiler::Error::EmptyFilter,
        })?;
        report::install_handler().map_err(SeccompError::Handler)?;
        report::set_thread_kind(kind);
        // In order: the allow list, last, forbids seccomp(2) itself.
        for program in stack {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                kind: kind.name(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Starts thread `name` that installs `kind`'s filter (when `filters` is
/// set) before running `f`; returns once the filter is in place. The
/// thread yields `None` if its filter failed (then `f` never ran and this
/// returns the error).
pub fn spawn_filtered<T, F>(
    name: String,
    kind: ThreadKind,
    filters: Option<Arc<ThreadFilters>>,
    f: F,
) -> Result<JoinHandle<Option<T>>, SeccompError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let thread_name = name.clone();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(filters) = filters {
                if let Err(e) = filters.install(kind) {
                    let _ = tx.send(Err(e));
                    return None;
                }
            }
            let _ = tx.send(Ok(()));
            Some(f())
        })
        .map_err(|source| SeccompError::Thread {
            name: thread_name,
            source,
        })?;
    match rx.recv_timeout(INSTALL_TIMEOUT) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SeccompError::Thread {
            name,
            source: io::Error::new(io::ErrorKind::TimedOut, "no filter report"),
        }),
    }
}

#[cfg(test)]
mod tests;
