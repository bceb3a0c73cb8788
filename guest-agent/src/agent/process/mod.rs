//! The process table: programs that live in the agent, not in a
//! connection.
//!
//! `Start` puts a program in the [`Table`] and answers with its id at once.
//! From then on one supervisor thread per process (see `supervisor`) reads
//! its stdout and stderr into a bounded ring of numbered chunks (see
//! `ring`), enforces its timeout and output cap, and records how it ended.
//! Connections only look at a process: attach (replay the ring, follow
//! new chunks), wait, write stdin (see `stdin`), signal, collect. A
//! finished process keeps its status and ring until it is collected or
//! the bound on finished processes evicts it, oldest first.
//!
//! `Exec` is the same machinery (see `super::exec`): a process whose one
//! reader must see every chunk ([`StartOptions::keep_all`]), so the
//! supervisor stops reading the pipes instead of evicting what that reader
//! has not sent yet, and the program slows down to the host's pace.
//!
//! Locks: the table's mutex, then a process's `state`; `stdin` (held up
//! to a stdin write's timeout) and `cgroup` are taken alone, or `stdin`
//! before `state`.

mod ring;
pub mod serve;
mod spawn;
mod stdin;
mod supervisor;
mod table;
mod validate;
mod waker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_agent::protocol::{ExitStatus, Gap, ProcessInfo};

use super::reaper::{Reaper, WaitStatus};
use super::sandbox::ExecCgroup;
pub use ring::Chunk;
use ring::OutputRing;
pub use spawn::StartError;
pub use stdin::StdinError;
use stdin::StdinPipe;
pub use table::{Limits, StartOptions, Table, TableError};
use waker::Mailbox;

/// Most bytes of output one attach batch copies out of the ring.
const BATCH_BYTES: usize = 256 * 1024;

/// Why a request on an existing process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process has already exited.
    #[error("process {0} has exited")]
    NotRunning(u64),
    /// A signal number outside 1..=64.
    #[error("invalid signal {0}")]
    BadSignal(i32),
    /// Sending the signal failed.
    #[error("cannot signal process {id}")]
    Signal {
        /// The process.
        id: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How an attach batch ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// The process exited and the reader has every chunk still held.
    Exited(ExitStatus),
    /// The reader has every chunk produced so far (the last one's seq).
    CaughtUp(u64),
}

/// What an attached reader gets next.
#[derive(Debug, Default)]
pub struct Batch {
    /// Chunks evicted before the reader got them.
    pub gap: Option<Gap>,
    /// Chunks after the reader's position (and after the gap).
    pub chunks: Vec<Chunk>,
    /// Set when the reader is done.
    pub end: Option<BatchEnd>,
}

struct State {
    ring: OutputRing,
    /// Set by the supervisor once everything is over.
    exit: Option<ExitStatus>,
    /// The oldest chunk a keep-all reader still needs.
    keep_from: Option<u64>,
}

/// One program in the table.
pub struct Process {
    id: u64,
    argv: Vec<String>,
    started_unix_ms: u64,
    started: Instant,
    pgid: libc::pid_t,
    reaper: Reaper,
    cgroup: Mutex<Option<ExecCgroup>>,
    state: Mutex<State>,
    changed: Condvar,
    stdin: Mutex<StdinPipe>,
    stdin_open: AtomicBool,
    mailbox: Arc<Mailbox>,
}

impl Process {
    /// The agent's id of this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the stdin pipe and records whether it is still open
    /// (for listings, which must not wait behind a slow write).
    fn with_stdin<T>(&self, f: impl FnOnce(&mut StdinPipe) -> T) -> T {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut stdin);
        self.stdin_open.store(stdin.is_open(), Ordering::Relaxed);
        out
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().exit
    }

    /// Its entry in a listing.
    pub fn info(&self) -> ProcessInfo {
        let stdin_open = self.stdin_open.load(Ordering::Relaxed);
        let st = self.lock();
        ProcessInfo {
            id: self.id,
            argv: self.argv.clone(),
            exit: st.exit,
            started_unix_ms: self.started_unix_ms,
            first_seq: st.ring.first_seq(),
            last_seq: st.ring.last_seq(),
            stdin_open,
        }
    }

    /// SIGKILLs the process group and everything in the cgroup.
    pub fn kill(&self) {
        self.reaper.kill_group(self.pgid);
        if let Some(cg) = self
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            cg.kill();
        }
    }

    /// Sends `signal` to the process group; `SIGKILL` also empties the
    /// cgroup.
    pub fn signal(&self, signal: i32) -> Result<(), ProcessError> {
        if !(1..=64).contains(&signal) {
            return Err(ProcessError::BadSignal(signal));
        }
        if self.lock().exit.is_some() {
            return Err(ProcessError::NotRunning(self.id));
        }
        if signal == libc::SIGKILL {
            self.kill();
            return Ok(());
        }
        self.reaper
            .signal_group(self.pgid, signal)
            .map_err(|source| ProcessError::Signal {
                id: self.id,
                source,
            })
    }

    /// Writes offset-tagged stdin bytes (see `stdin`).
    pub fn write_stdin(
        &self,
        offset: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<u64, StdinError> {
        self.with_stdin(|stdin| stdin.write_at(offset, data, timeout))
    }

    /// Closes stdin (the program reads end of file).
    pub fn close_stdin(&self) {
        self.with_stdin(StdinPipe::close);
    }

    /// The next chunks after `cursor`, waiting up to `max_wait` for some.
    /// An empty batch without an end means the wait ran out: check the
    /// connection and ask again.
    pub fn next_batch(&self, cursor: u64, follow: bool, max_wait: Duration) -> Batch {
        let deadline = Instant::now() + max_wait;
        let mut st = self.lock();
        loop {
            let gap = st.ring.gap_after(cursor);
            let from = gap.map_or(cursor, |g| g.last_seq);
            let chunks = st.ring.chunks_after(from, BATCH_BYTES);
            if gap.is_some() || !chunks.is_empty() {
                return Batch {
                    gap,
                    chunks,
                    end: None,
                };
            }
            let end = match st.exit {
                Some(exit) => Some(BatchEnd::Exited(exit)),
                None if !follow => Some(BatchEnd::CaughtUp(st.ring.last_seq())),
                None => None,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if end.is_some() || left.is_zero() {
                return Batch {
                    end,
                    ..Batch::default()
                };
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for the process to be over.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |st| st.exit.is_none())
            .unwrap_or_else(|e| e.into_inner());
        st.exit
    }

    /// A keep-all reader has sent everything before `seq`.
    pub fn keep_from(&self, seq: u64) {
        let mut st = self.lock();
        if st.keep_from.is_some() {
            st.keep_from = Some(seq);
        }
        drop(st);
        self.mailbox.waker.wake();
    }

    /// The keep-all reader is gone: evict freely from now on.
    pub fn release(&self) {
        self.lock().keep_from = None;
        self.mailbox.waker.wake();
    }
}

/// The supervisor's side.
impl Process {
    /// Whether reading another chunk now would evict one a keep-all
    /// reader still needs.
    fn held_back(&self) -> bool {
        let st = self.lock();
        st.keep_from
            .is_some_and(|k| st.ring.would_evict(kiln_agent::protocol::MAX_CHUNK, k))
    }

    fn take_reaped(&self) -> Option<WaitStatus> {
        self.mailbox.take_reaped()
    }

    fn take_cgroup(&self) -> Option<ExecCgroup> {
        self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn push_output(&self, stream: kiln_agent::protocol::OutputStream, data: Vec<u8>) {
        self.lock().ring.push(stream, data);
        self.changed.notify_all();
    }

    /// Publishes the end: status set, waiters woken.
    fn finish(&self, status: ExitStatus) {
        self.lock().exit = Some(status);
        self.changed.notify_all();
    }
}

/// `Exec`'s side.
impl Process {
    /// Writes all of `data` after the bytes accepted so far, for as long as
    /// the program runs (a program that does not read holds the caller, as
    /// a blocking pipe would); what cannot be written once stdin closes or
    /// the program ends is dropped.
    pub fn append_stdin(&self, data: &[u8]) {
        let start = self.with_stdin(|stdin| stdin.accepted());
        let end = start + data.len() as u64;
        // Short steps, so the lock is never held for long.
        while let Ok(accepted) = self.write_stdin(start, data, Duration::from_millis(100)) {
            if accepted >= end || self.exit_status().is_some() {
                return;
            }
        }
    }

    /// Wakes readers waiting in [`Process::next_batch`] (they look for
    /// news from elsewhere, such as the host going away).
    pub fn interrupt(&self) {
        let _st = self.lock();
        self.changed.notify_all();
    }
}
