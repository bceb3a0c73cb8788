//! Command-line parsing (by hand: the agent stays small and static).

use std::ffi::OsString;
use std::path::PathBuf;

use thiserror::Error;

use kiln_agent::protocol::AGENT_VSOCK_PORT;

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: kiln-agent [--listen-unix PATH | --vsock-port PORT] [--sandbox-root DIR]

As PID 1 (inside a kiln microVM) the agent mounts /proc, /sys, /dev, /tmp,
builds the sandbox (runtime image from /dev/vda under a tmpfs overlay,
cgroup limits; kiln.overlay_mib=, kiln.sandbox_mem_mib=, kiln.pids_max= on
the kernel command line), sizes the process table (kiln.output_buffer_kib=,
kiln.max_processes=, kiln.max_finished=), marks the boot timer, reaps
orphans and serves on vsock port 1024; unknown arguments from the kernel
command line are ignored.
Programs run chrooted into the sandbox as uid/gid 1000.

  --listen-unix PATH   serve on a unix socket instead (host testing)
  --vsock-port PORT    serve on another vsock port
  --sandbox-root DIR   off PID 1: run programs chrooted into DIR as uid 1000
                       (no mounts, no cgroups; host testing); file requests
                       are confined to DIR as uid 1000 too
  --files-root DIR     confine file requests to DIR, as the agent's own user
                       (host testing; without it or --sandbox-root a host
                       agent refuses file requests)
  --setting KEY=VALUE  off PID 1: a kiln.* setting as on the kernel command
                       line (kiln.output_buffer_kib=, kiln.max_processes=,
                       kiln.max_finished=); may repeat
  --version            print the version
  --help               print this help
";

/// Where to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// AF_VSOCK, any CID, this port.
    Vsock(u32),
    /// A unix socket at this path.
    Unix(PathBuf),
}

/// How to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// Where.
    pub transport: Transport,
    /// `--sandbox-root`: confine programs to this directory (host testing).
    pub sandbox_root: Option<PathBuf>,
    /// `--files-root`: confine the files API to this directory, with the
    /// agent's own credentials (host testing).
    pub files_root: Option<PathBuf>,
    /// `--setting`: `kiln.*=value` words, as on the kernel command line.
    pub settings: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Serve the protocol.
    Serve(Serve),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// A command line that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// An option without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// A port that is not a number.
    #[error("invalid vsock port {0:?}")]
    BadPort(String),
    /// An option we do not know.
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

/// Parses the arguments after the program name. With `lenient` (PID 1),
/// unknown arguments are ignored: the kernel passes unrecognised command
/// line words to init.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    lenient: bool,
) -> Result<Invocation, ArgsError> {
    let mut transport = Transport::Vsock(AGENT_VSOCK_PORT);
    let mut sandbox_root = None;
    let mut files_root = None;
    let mut settings = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--help" | "-h") => return Ok(Invocation::Help),
            Some("--version" | "-V") => return Ok(Invocation::Version),
            Some("--listen-unix") => {
                let path = args
                    .next()
                    .ok_or(ArgsError::MissingValue("--listen-unix"))?;
                transport = Transport::Unix(PathBuf::from(path));
            }
            Some("--sandbox-root") => {
                let dir = args
                    .next()
                    .ok_or(ArgsError::MissingValue("--sandbox-root"))?;
                sandbox_root = Some(PathBuf::from(dir));
            }
            Some("--files-root") => {
                let dir = args.next().ok_or(ArgsError::MissingValue("--files-root"))?;
                files_root = Some(PathBuf::from(dir));
            }
            Some("--setting") => {
                let word = args.next().ok_or(ArgsError::MissingValue("--setting"))?;
                settings.push(word.to_string_lossy().into_owned());
            }
            Some("--vsock-port") => {
                let raw = args.next().ok_or(ArgsError::MissingValue("--vsock-port"))?;
                let raw = raw.to_string_lossy().into_owned();
                let port = raw.parse().map_err(|_| ArgsError::BadPort(raw))?;
                transport = Transport::Vsock(port);
            }
            _ if lenient => {}
            _ => return Err(ArgsError::Unknown(arg.to_string_lossy().into_owned())),
        }
    }
    Ok(Invocation::Serve(Serve {
        transport,
        sandbox_root,
        files_root,
        settings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str], lenient: bool) -> Result<Invocation, ArgsError> {
        parse(args.iter().map(OsString::from), lenient)
    }

    fn serve_on(transport: Transport) -> Invocation {
        Invocation::Serve(super::Serve {
            transport,
            sandbox_root: None,
            files_root: None,
            settings: Vec::new(),
        })
    }

    #[test]
    fn parses_transports() {
        assert_eq!(p(&[], false), Ok(serve_on(Transport::Vsock(1024))));
        assert_eq!(
            p(&["--listen-unix", "/tmp/s"], false),
            Ok(serve_on(Transport::Unix("/tmp/s".into())))
        );
        assert_eq!(
            p(&["--vsock-port", "77"], false),
            Ok(serve_on(Transport::Vsock(77)))
        );
        assert_eq!(p(&["--help"], false), Ok(Invocation::Help));
        assert_eq!(
            p(&["--listen-unix", "/s", "--sandbox-root", "/r"], false),
            Ok(Invocation::Serve(super::Serve {
                transport: Transport::Unix("/s".into()),
                sandbox_root: Some("/r".into()),
                files_root: None,
                settings: Vec::new(),
            }))
        );
        assert_eq!(
            p(&["--sandbox-root"], false),
            Err(ArgsError::MissingValue("--sandbox-root"))
        );
        assert_eq!(
            p(&["--files-root", "/f"], false),
            Ok(Invocation::Serve(super::Serve {
                transport: Transport::Vsock(1024),
                sandbox_root: None,
                files_root: Some("/f".into()),
                settings: Vec::new(),
            }))
        );
        assert_eq!(
            p(&["--files-root"], false),
            Err(ArgsError::MissingValue("--files-root"))
        );
        let Ok(Invocation::Serve(s)) = p(
            &["--setting", "kiln.max_processes=2", "--setting", "x=1"],
            false,
        ) else {
            panic!("settings");
        };
        assert_eq!(s.settings, ["kiln.max_processes=2", "x=1"]);
        assert_eq!(
            p(&["--setting"], false),
            Err(ArgsError::MissingValue("--setting"))
        );
    }

    #[test]
    fn rejects_bad_input_unless_lenient() {
        assert_eq!(
            p(&["--listen-unix"], false),
            Err(ArgsError::MissingValue("--listen-unix"))
        );
        assert_eq!(
            p(&["--vsock-port", "x"], false),
            Err(ArgsError::BadPort("x".into()))
        );
        assert_eq!(
            p(&["quiet"], false),
            Err(ArgsError::Unknown("quiet".into()))
        );
        assert_eq!(
            p(&["quiet", "splash"], true),
            Ok(serve_on(Transport::Vsock(1024)))
        );
    }
}
