//! `Exec`: run one program in its own process group and stream its output.
//!
//! Threads per exec: the connection's handler thread runs the output pump
//! (the only writer of frames on the connection), a stdin thread reads the
//! rest of the request (stdin frames, or the host hanging up), and the
//! shared reaper thread reports the exit. See `pump` for the state machine.
//!
//! When the agent runs a sandbox (see `sandbox`), the child enters it
//! between fork and exec: its own cgroup, `chroot`, the sandbox user, home
//! directory; `HOME` is set unless the request sets it.

mod pump;
mod stdin;

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;

use thiserror::Error;

use kiln_agent::protocol::{
    write_message, ErrorCode, ExecRequest, Message, DEFAULT_MAX_OUTPUT_BYTES,
};

use super::conn::Conn;
use super::klog::{chain, klog};
use super::reaper::Reaper;
use super::sandbox::{Entry, ExecSandbox, Sandbox, SandboxError, SANDBOX_HOME};
use pump::Shared;

/// `PATH` given to programs whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why an exec could not start.
#[derive(Debug, Error)]
pub enum ExecError {
    /// `argv` has no program.
    #[error("argv is empty")]
    EmptyArgv,
    /// A string that becomes a C string contains NUL.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// An environment variable name is empty or contains `=`.
    #[error("invalid environment variable name {0:?}")]
    BadEnvName(String),
    /// The process could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Agent-side resources (pipe, thread, socket clone) ran out.
    #[error("agent resources exhausted")]
    Resources(#[source] io::Error),
    /// The exec's sandbox (cgroup) could not be prepared.
    #[error("cannot prepare the sandbox")]
    Sandbox(#[from] SandboxError),
}

impl ExecError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::EmptyArgv | Self::Nul(_) | Self::BadEnvName(_) => ErrorCode::BadRequest,
            Self::Spawn { .. } => ErrorCode::SpawnFailed,
            Self::Resources(_) => ErrorCode::Internal,
            Self::Sandbox(SandboxError::Nul(_)) => ErrorCode::BadRequest,
            Self::Sandbox(_) => ErrorCode::Internal,
        }
    }
}

/// Runs `req` and streams the result over `conn`; always ends with an
/// `Exit` or `Error` frame unless the host hung up first.
pub fn run(conn: &mut Conn, req: ExecRequest, reaper: &Reaper, sandbox: &Sandbox) {
    if let Err(err) = start_and_pump(conn, req, reaper, sandbox) {
        let msg = chain(&err);
        if err.code() == ErrorCode::Internal {
            klog!("exec: {msg}");
        }
        let _ = write_message(conn, &Message::error(err.code(), msg));
    }
}

fn start_and_pump(
    conn: &mut Conn,
    req: ExecRequest,
    reaper: &Reaper,
    sandbox: &Sandbox,
) -> Result<(), ExecError> {
    validate(&req)?;
    // Dropped at the end of this function, on every path: kills whatever
    // is left in the exec's cgroup and removes it.
    let confined = sandbox.prepare_exec(req.cwd.as_deref())?;
    let mut cmd = build_command(&req, &confined);
    let shared = Arc::new(Shared::new().map_err(ExecError::Resources)?);
    let reader = conn.try_clone().map_err(ExecError::Resources)?;
    // Stdin frames may be far apart; only the host hanging up ends them.
    reader
        .set_read_timeout(None)
        .map_err(ExecError::Resources)?;

    let on_exit = {
        let shared = Arc::clone(&shared);
        move |status| shared.set_exit(status)
    };
    let mut child = reaper
        .spawn(&mut cmd, on_exit)
        .map_err(|source| ExecError::Spawn {
            program: req.argv[0].clone(),
            source,
        })?;
    let started = std::time::Instant::now();
    // setsid() in the child made it the leader of a new group: pgid == pid.
    let pgid = libc::pid_t::try_from(child.id()).unwrap_or(0);

    let stdin_pipe = child.stdin.take();
    let feeder_shared = Arc::clone(&shared);
    let expect_stdin = req.stdin;
    let feeder = thread::Builder::new()
        .name("exec-stdin".into())
        .spawn(move || stdin::feed(reader, stdin_pipe, expect_stdin, &feeder_shared));
    if let Err(e) = feeder {
        reaper.kill_group(pgid);
        if let Some(cg) = &confined.cgroup {
            cg.kill();
        }
        return Err(ExecError::Resources(e));
    }

    let outputs = [
        child.stdout.take().map(pump::Output::stdout),
        child.stderr.take().map(pump::Output::stderr),
    ];
    // The child is reaped by the reaper; dropping `Child` neither waits nor
    // kills.
    drop(child);
    pump::Pump {
        conn,
        shared: &shared,
        reaper,
        pgid,
        started,
        timeout: req.timeout_ms.map(std::time::Duration::from_millis),
        outputs,
        max_output: req.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
        cgroup: confined.cgroup.as_ref(),
    }
    .run();
    Ok(())
}

fn validate(req: &ExecRequest) -> Result<(), ExecError> {
    if req.argv.is_empty() {
        return Err(ExecError::EmptyArgv);
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(ExecError::Nul("argv"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') {
            return Err(ExecError::BadEnvName(k.clone()));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(ExecError::Nul("env"));
        }
    }
    if req.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(ExecError::Nul("cwd"));
    }
    Ok(())
}

fn build_command(req: &ExecRequest, confined: &ExecSandbox) -> Command {
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear();
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    let has = |name: &str| req.env.iter().any(|(k, _)| k == name);
    if !has("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if confined.entry.is_some() && !has("HOME") {
        cmd.env("HOME", SANDBOX_HOME);
    }
    // Confined, the entry changes directory after chroot; std's
    // current_dir would run before it, outside the sandbox.
    if let (None, Some(cwd)) = (&confined.entry, &req.cwd) {
        cmd.current_dir(cwd);
    }
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setsid(2), which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(entry) = &confined.entry {
        add_entry(&mut cmd, entry);
    }
    cmd
}

/// Adds the sandbox entry as a second `pre_exec` hook (after `setsid`).
fn add_entry(cmd: &mut Command, entry: &Entry) {
    let entry = entry.clone();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls `Entry::enter`, which makes async-signal-safe system calls on
    // data prepared before the fork (the cgroup fd stays open in the
    // parent until after spawn returns).
    unsafe {
        cmd.pre_exec(move || entry.enter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_bad_requests() {
        let ok = ExecRequest {
            argv: vec!["true".into()],
            env: vec![("A".into(), "b=c".into())],
            ..ExecRequest::default()
        };
        assert!(validate(&ok).is_ok());
        let cases = [
            ExecRequest::default(),
            ExecRequest {
                argv: vec!["a\0b".into()],
                ..ok.clone()
            },
            ExecRequest {
                env: vec![("A=B".into(), String::new())],
                ..ok.clone()
            },
            ExecRequest {
                env: vec![(String::new(), String::new())],
                ..ok.clone()
            },
            ExecRequest {
                env: vec![("A".into(), "\0".into())],
                ..ok.clone()
            },
            ExecRequest {
                cwd: Some("/\0".into()),
                ..ok.clone()
            },
        ];
        for req in cases {
            let err = validate(&req).expect_err("invalid");
            assert_eq!(err.code(), ErrorCode::BadRequest, "{req:?}");
        }
    }

    #[test]
    fn default_path_only_when_missing() {
        let req = ExecRequest {
            argv: vec!["x".into()],
            ..ExecRequest::default()
        };
        let cmd = build_command(&req, &ExecSandbox::default());
        let path: Vec<_> = cmd.get_envs().filter(|(k, _)| *k == "PATH").collect();
        assert_eq!(path.len(), 1);
        assert_eq!(path[0].1, Some(std::ffi::OsStr::new(DEFAULT_PATH)));
        let req = ExecRequest {
            env: vec![("PATH".into(), "/x".into())],
            ..req
        };
        let cmd = build_command(&req, &ExecSandbox::default());
        let path: Vec<_> = cmd.get_envs().filter(|(k, _)| *k == "PATH").collect();
        assert_eq!(
            path,
            [(
                std::ffi::OsStr::new("PATH"),
                Some(std::ffi::OsStr::new("/x"))
            )]
        );
    }
}
