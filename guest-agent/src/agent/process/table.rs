//! The table of processes: ids, the live and finished bounds, start,
//! collect.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_agent::protocol::process::{cut_argv, MAX_LISTED_ARGV_BYTES};
use kiln_agent::protocol::{ExecRequest, ExitStatus, ProcessInfo, DEFAULT_MAX_OUTPUT_BYTES};

use super::super::reaper::Reaper;
use super::super::sandbox::Sandbox;
use super::ring::OutputRing;
use super::spawn::{build_command, StartError};
use super::stdin::StdinPipe;
use super::supervisor::Supervisor;
use super::validate::validate;
use super::waker::Mailbox;
use super::{Process, State};

/// Output ring of each process when nothing else is configured (1 MiB).
pub const DEFAULT_OUTPUT_BUFFER: usize = 1 << 20;
/// Most processes running at once by default.
pub const DEFAULT_MAX_LIVE: usize = 64;
/// Most finished processes kept (status and output) by default.
pub const DEFAULT_MAX_FINISHED: usize = 32;

/// Bounds of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of output each process keeps.
    pub output_buffer: usize,
    /// Most processes running at once; more are refused.
    pub max_live: usize,
    /// Most finished processes kept; the oldest goes first.
    pub max_finished: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            output_buffer: DEFAULT_OUTPUT_BUFFER,
            max_live: DEFAULT_MAX_LIVE,
            max_finished: DEFAULT_MAX_FINISHED,
        }
    }
}

/// How a process is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// One reader must get every chunk (`Exec`): hold the program back
    /// rather than evict output that reader has not sent.
    pub keep_all: bool,
}

/// A request named a process the table cannot act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// No process has this id (never started, collected or evicted).
    #[error("no process {0}")]
    NoSuchProcess(u64),
    /// The process still runs.
    #[error("process {0} is still running")]
    StillRunning(u64),
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    procs: BTreeMap<u64, Arc<Process>>,
    /// Ids of finished processes, in the order they finished.
    finished: VecDeque<u64>,
    /// Slots reserved by starts in progress.
    starting: usize,
}

/// Every process of the agent.
pub struct Table {
    inner: Mutex<Inner>,
    limits: Limits,
    reaper: Reaper,
}

impl Table {
    /// An empty table.
    pub fn new(limits: Limits, reaper: Reaper) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            limits,
            reaper,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `req` in `sandbox`; the process is in the table (and being
    /// supervised) when this returns.
    pub fn start(
        self: &Arc<Self>,
        req: &ExecRequest,
        options: StartOptions,
        sandbox: &Sandbox,
    ) -> Result<Arc<Process>, StartError> {
        validate(req)?;
        let id = {
            let mut inner = self.lock();
            let live = inner.procs.len() - inner.finished.len() + inner.starting;
            if live >= self.limits.max_live {
                return Err(StartError::TooMany(self.limits.max_live));
            }
            inner.starting += 1;
            inner.next_id += 1;
            inner.next_id - 1
        };
        let spawned = self.spawn(id, req, options, sandbox);
        let mut inner = self.lock();
        inner.starting -= 1;
        let (process, supervisor) = spawned?;
        inner.procs.insert(id, Arc::clone(&process));
        drop(inner);
        let run = thread::Builder::new()
            .name(format!("proc-{id}"))
            .spawn(move || supervisor.run());
        if let Err(e) = run {
            // Nothing supervises it: it must not run.
            process.kill();
            drop(process.take_cgroup());
            self.lock().procs.remove(&id);
            return Err(StartError::Resources(e));
        }
        Ok(process)
    }

    fn spawn(
        self: &Arc<Self>,
        id: u64,
        req: &ExecRequest,
        options: StartOptions,
        sandbox: &Sandbox,
    ) -> Result<(Arc<Process>, Supervisor), StartError> {
        // Owned by the process from here on; dropping it on an error path
        // kills whatever is in the cgroup and removes it.
        let confined = sandbox.prepare_exec(req.cwd.as_deref())?;
        let mut cmd = build_command(req, &confined);
        let mailbox = Arc::new(Mailbox::new().map_err(StartError::Resources)?);
        let on_exit = {
            let mailbox = Arc::clone(&mailbox);
            move |status| mailbox.set_reaped(status)
        };
        let mut child =
            self.reaper
                .spawn(&mut cmd, on_exit)
                .map_err(|source| StartError::Spawn {
                    program: req.argv[0].clone(),
                    source,
                })?;
        let started = Instant::now();
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // setsid() in the child made it the leader of a new group.
        let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        let stdin = match StdinPipe::new(child.stdin.take().map(OwnedFd::from)) {
            Ok(stdin) => stdin,
            Err(e) => {
                self.reaper.kill_group(pgid);
                return Err(StartError::Resources(e));
            }
        };
        let outputs = [
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
        ];
        // The reaper reaps it; dropping `Child` neither waits nor kills.
        drop(child);
        let process = Arc::new(Process {
            id,
            argv: cut_argv(&req.argv, MAX_LISTED_ARGV_BYTES),
            started_unix_ms,
            started,
            pgid,
            reaper: self.reaper.clone(),
            cgroup: Mutex::new(confined.cgroup),
            state: Mutex::new(State {
                ring: OutputRing::new(self.limits.output_buffer),
                exit: None,
                keep_from: options.keep_all.then_some(1),
            }),
            changed: Condvar::new(),
            stdin_open: AtomicBool::new(stdin.is_open()),
            stdin: Mutex::new(stdin),
            mailbox,
        });
        let table = Arc::clone(self);
        let supervisor = Supervisor {
            process: Arc::clone(&process),
            outputs,
            timeout: req.timeout_ms.map(Duration::from_millis),
            max_output: req.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            on_finish: Box::new(move |process, status| table.finished(process, status)),
        };
        Ok((process, supervisor))
    }

    /// The supervisor is done: publish the status and list the process
    /// among the finished in one step under the table lock (so whoever
    /// sees the status can collect it), then evict the oldest finished
    /// ones beyond the bound.
    fn finished(&self, process: &Process, status: ExitStatus) {
        let mut inner = self.lock();
        process.finish(status);
        let id = process.id;
        if !inner.procs.contains_key(&id) {
            return;
        }
        inner.finished.push_back(id);
        while inner.finished.len() > self.limits.max_finished {
            if let Some(old) = inner.finished.pop_front() {
                inner.procs.remove(&old);
            }
        }
    }

    /// The process `id`.
    pub fn get(&self, id: u64) -> Result<Arc<Process>, TableError> {
        self.lock()
            .procs
            .get(&id)
            .cloned()
            .ok_or(TableError::NoSuchProcess(id))
    }

    /// Every process, by id.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let procs: Vec<_> = self.lock().procs.values().cloned().collect();
        procs.iter().map(|p| p.info()).collect()
    }

    /// Forgets the finished process `id`; returns it.
    pub fn collect(&self, id: u64) -> Result<Arc<Process>, TableError> {
        let mut inner = self.lock();
        let process = inner.procs.get(&id).ok_or(TableError::NoSuchProcess(id))?;
        // Listed as finished exactly when the status is published.
        if !inner.finished.contains(&id) {
            return Err(TableError::StillRunning(id));
        }
        let process = Arc::clone(process);
        inner.procs.remove(&id);
        inner.finished.retain(|f| *f != id);
        Ok(process)
    }
}
