//! A VM process as a handle: exit notification without polling (the child's
//! `wait`, or a pidfd for a process adopted after a daemon restart) and
//! signals through a pidfd, which can never hit a recycled pid.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::identity::ProcessIdentity;

/// How a VM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEnd {
    /// Its exit status; `None` for a process that is not this process's
    /// child (adopted after a restart), whose status nobody can collect.
    pub status: Option<ExitStatus>,
}

impl fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => write!(f, "exited with status {code}"),
                (None, Some(sig)) => write!(f, "killed by signal {sig}"),
                (None, None) => write!(f, "ended ({s})"),
            },
            None => f.write_str("ended"),
        }
    }
}

/// A running (or ended) process this daemon owns.
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    identity: ProcessIdentity,
    pidfd: OwnedFd,
    end: watch::Receiver<Option<ProcessEnd>>,
}

fn pid_of(raw: u32) -> io::Result<Pid> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))
}

impl ProcessHandle {
    /// Takes over a freshly spawned child. Must run inside a tokio runtime:
    /// a task awaits the child's exit (and reaps it).
    pub(crate) fn from_child(mut child: tokio::process::Child) -> io::Result<Self> {
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the child was already reaped"))?;
        // The child is not reaped before `wait` below, so the pidfd names it.
        let pidfd = pidfd_open(pid_of(pid)?, PidfdFlags::empty())?;
        let identity = ProcessIdentity::of(pid).unwrap_or(ProcessIdentity {
            pid,
            start_ticks: 0,
        });
        let (tx, end) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send(Some(ProcessEnd { status }));
        });
        Ok(ProcessHandle {
            identity,
            pidfd,
            end,
        })
    }

    /// Adopts a process that is not this process's child (a VM left running
    /// by an earlier daemon), if `identity` still names a live process.
    pub(crate) fn adopt(identity: ProcessIdentity) -> io::Result<Self> {
        let pidfd = pidfd_open(pid_of(identity.pid)?, PidfdFlags::empty())?;
        // Checked after opening the pidfd: if the identity still matches now,
        // the pidfd refers to that very process and not to a pid recycled
        // in between.
        if !identity.is_alive() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the process is gone (its pid now names another process)",
            ));
        }
        // SAFETY: the `OwnedFd` is a valid descriptor that the `AsyncFd`
        // owns; nothing replaces or closes it while registered.
        let watched = unsafe { AsyncFd::register(pidfd.try_clone()?)? };
        let (tx, end) = watch::channel(None);
        tokio::spawn(async move {
            // A pidfd polls readable once its process has exited.
            let _ = watched.readable().await;
            let _ = tx.send(Some(ProcessEnd { status: None }));
        });
        Ok(ProcessHandle {
            identity,
            pidfd,
            end,
        })
    }

    /// Pid and start time.
    pub(crate) fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// How the process ended, if it has.
    pub(crate) fn ended(&self) -> Option<ProcessEnd> {
        *self.end.borrow()
    }

    /// Waits for the process to end.
    pub(crate) async fn wait(&self) -> ProcessEnd {
        let mut end = self.end.clone();
        let seen = end.wait_for(Option::is_some).await.map(|v| *v);
        // The watcher task is gone only when the runtime shuts down.
        seen.ok().flatten().unwrap_or(ProcessEnd { status: None })
    }

    /// Sends `signal`; a process that already exited is not an error.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        match pidfd_send_signal(&self.pidfd, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILL.
    pub(crate) fn kill(&self) -> io::Result<()> {
        self.signal(Signal::KILL)
    }
}
