//! Turning a request into a process: validation, the command (clean
//! environment, own session, the sandbox entry between fork and exec).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use thiserror::Error;

use kiln_agent::protocol::{ErrorCode, ExecRequest};

use super::super::sandbox::{Entry, ExecSandbox, SandboxError, SANDBOX_HOME, SANDBOX_PATH};
use super::validate::InvalidRequest;

/// `PATH` given to unconfined programs whose environment has none (confined
/// ones get [`SANDBOX_PATH`]).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a process could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The request can never become a command.
    #[error("invalid exec request")]
    Invalid(#[from] InvalidRequest),
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
    /// The live-process limit is reached.
    #[error("{0} processes are running, the most the agent allows")]
    TooMany(usize),
}

impl StartError {
    /// The error code for the reply.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::Spawn { .. } => ErrorCode::SpawnFailed,
            Self::Resources(_) => ErrorCode::Internal,
            Self::Sandbox(SandboxError::Nul(_)) => ErrorCode::BadRequest,
            Self::Sandbox(_) => ErrorCode::Internal,
            Self::TooMany(_) => ErrorCode::TooManyProcesses,
        }
    }
}

/// The command for `req`, entering `confined` before exec.
pub fn build_command(req: &ExecRequest, confined: &ExecSandbox) -> Command {
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]).env_clear();
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    let has = |name: &str| req.env.iter().any(|(k, _)| k == name);
    if !has("PATH") {
        let path = match confined.entry {
            Some(_) => SANDBOX_PATH,
            None => DEFAULT_PATH,
        };
        cmd.env("PATH", path);
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
    fn invalid_requests_are_bad_requests() {
        let err = StartError::from(InvalidRequest::EmptyArgv);
        assert_eq!(err.code(), ErrorCode::BadRequest);
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

    #[test]
    fn confined_programs_get_the_sandbox_path_and_home() {
        let req = ExecRequest {
            argv: vec!["x".into()],
            ..ExecRequest::default()
        };
        let entry = Entry::new(std::path::Path::new("/r"), None, None).expect("valid");
        let confined = ExecSandbox {
            entry: Some(entry),
            cgroup: None,
        };
        let cmd = build_command(&req, &confined);
        let env = |name: &str| {
            cmd.get_envs()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v)
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(env("PATH").as_deref(), Some(SANDBOX_PATH));
        assert_eq!(env("HOME").as_deref(), Some(SANDBOX_HOME));
    }
}
