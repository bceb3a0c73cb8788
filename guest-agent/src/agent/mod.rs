//! The agent: PID 1 setup, the listener, and the request handlers.

mod args;
mod boot_timer;
mod config;
mod conn;
mod egress;
mod exec;
mod files;
mod init;
pub mod klog;
mod listener;
mod power;
mod process;
mod reaper;
mod resume;
mod sandbox;
mod server;

use std::process::ExitCode;
use std::time::Instant;

use thiserror::Error;

use args::{Invocation, Transport};
use config::Config;
use klog::{chain, klog};
use listener::{ListenError, Listener};
use process::{Limits, Table};
use reaper::Reaper;
use sandbox::Sandbox;
use server::{Mode, Server};

/// Why the agent could not start serving.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Bad command line.
    #[error("invalid arguments")]
    Args(#[from] args::ArgsError),
    /// The reaper thread could not start.
    #[error("cannot start the reaper thread")]
    Reaper(#[source] std::io::Error),
    /// The listening socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let started = Instant::now();
    // SAFETY: getpid(2) cannot fail.
    let pid1 = unsafe { libc::getpid() } == 1;
    match run(started, pid1) {
        Ok(code) => code,
        Err(e) => {
            klog!("fatal: {}", chain(&e));
            if pid1 {
                // PID 1 must not exit (kernel panic); end the VM cleanly.
                power::reboot(false);
            }
            if matches!(e, AgentError::Args(_)) {
                eprint!("{}", args::USAGE);
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(started: Instant, pid1: bool) -> Result<ExitCode, AgentError> {
    let serve = match args::parse(std::env::args_os().skip(1), pid1)? {
        Invocation::Help => {
            print!("{}", args::USAGE);
            return Ok(ExitCode::SUCCESS);
        }
        Invocation::Version => {
            println!("kiln-agent {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Invocation::Serve(s) => s,
    };
    let transport = serve.transport;

    if pid1 {
        init::setup();
        klog::init(true);
        if let Err(e) = boot_timer::mark_userspace_started() {
            klog!("boot timer: {}", chain(&e));
        }
        if let Err(e) = boot_timer::mark_on_console_if_asked() {
            klog!("console mark: {e}");
        }
    }
    let (config, warnings) = if pid1 {
        Config::from_kernel()
    } else {
        config::parse(&serve.settings.join(" "))
    };
    let sandbox = if pid1 {
        init::sandbox(&config, &warnings)
    } else if let Some(dir) = &serve.sandbox_root {
        Sandbox::host_dir(dir)
    } else {
        Sandbox::unconfined()
    };
    if !pid1 {
        // Orphaned grandchildren come back to us (and our reaper) as they
        // would to PID 1.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }

    if !pid1 {
        for w in &warnings {
            klog!("settings: {w}");
        }
    }

    let reaper = Reaper::start().map_err(AgentError::Reaper)?;
    let table = Table::new(limits(&config), reaper);
    let (listener, mode) = match &transport {
        Transport::Vsock(port) => (
            Listener::vsock(*port)?,
            if pid1 { Mode::Guest } else { Mode::Host(None) },
        ),
        Transport::Unix(path) => (Listener::unix(path)?, Mode::Host(Some(path.clone()))),
    };
    if pid1 && matches!(transport, Transport::Vsock(_)) {
        // The loopback proxy port of programs; the host decides per
        // sandbox whether anything answers behind it.
        if let Err(e) = egress::start() {
            klog!("egress forwarder not started: {e}");
        }
    }
    klog!(
        "serving on {} after {} ms",
        match &transport {
            Transport::Vsock(port) => format!("vsock port {port}"),
            Transport::Unix(path) => path.display().to_string(),
        },
        started.elapsed().as_millis()
    );
    let files = match (&serve.files_root, sandbox.root()) {
        (Some(dir), _) => Some(files::Config::host_dir(dir)),
        (None, Some(root)) => Some(files::Config::sandbox(root)),
        (None, None) => None,
    };
    Server::new(started, mode, sandbox, files, table).serve(&listener)
}

/// The process table's bounds from the settings.
fn limits(config: &Config) -> Limits {
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Limits {
        output_buffer: size(config.output_buffer_kib.saturating_mul(1024)),
        max_live: size(config.max_processes),
        max_finished: size(config.max_finished),
    }
}
