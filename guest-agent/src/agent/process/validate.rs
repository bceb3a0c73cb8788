//! The checks an exec request passes before anything is spawned: what a
//! host can send that could never become a command. Pure (no process, no
//! file system), so the fuzz target `agent_request` compiles this file as
//! it is.

use thiserror::Error;

use kiln_agent::protocol::ExecRequest;

/// An exec request that cannot become a command.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidRequest {
    /// `argv` has no program.
    #[error("argv is empty")]
    EmptyArgv,
    /// A string that becomes a C string contains NUL.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// An environment variable name is empty or contains `=`.
    #[error("invalid environment variable name {0:?}")]
    BadEnvName(String),
}

/// Rejects requests that cannot become a command.
pub fn validate(req: &ExecRequest) -> Result<(), InvalidRequest> {
    if req.argv.is_empty() {
        return Err(InvalidRequest::EmptyArgv);
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(InvalidRequest::Nul("argv"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') {
            return Err(InvalidRequest::BadEnvName(k.clone()));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(InvalidRequest::Nul("env"));
        }
    }
    if req.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(InvalidRequest::Nul("cwd"));
    }
    Ok(())
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
        assert_eq!(validate(&ok), Ok(()));
        let cases = [
            (ExecRequest::default(), InvalidRequest::EmptyArgv),
            (
                ExecRequest {
                    argv: vec!["a\0b".into()],
                    ..ok.clone()
                },
                InvalidRequest::Nul("argv"),
            ),
            (
                ExecRequest {
                    env: vec![("A=B".into(), String::new())],
                    ..ok.clone()
                },
                InvalidRequest::BadEnvName("A=B".into()),
            ),
            (
                ExecRequest {
                    env: vec![(String::new(), String::new())],
                    ..ok.clone()
                },
                InvalidRequest::BadEnvName(String::new()),
            ),
            (
                ExecRequest {
                    env: vec![("A".into(), "\0".into())],
                    ..ok.clone()
                },
                InvalidRequest::Nul("env"),
            ),
            (
                ExecRequest {
                    cwd: Some("/\0".into()),
                    ..ok.clone()
                },
                InvalidRequest::Nul("cwd"),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(validate(&req), Err(want), "{req:?}");
        }
    }
}
