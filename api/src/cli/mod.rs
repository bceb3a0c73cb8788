//! Command-line parsing and dispatch. Errors are printed as a whole chain.

mod audit;
mod client;
mod image_build;
mod output;
mod processes;
mod run;
mod serve;
mod template;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: microVM sandboxes for AI agents.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(flatten)]
    conn: client::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check what this host offers for running kiln's VMs (KVM speed, MSHV).
    Doctor,
    /// Boot a microVM, run one command in it, stream its output, exit with
    /// its code (no daemon needed).
    Run(Box<run::RunArgs>),
    /// Run the daemon: warm pools and the HTTP API on a unix socket.
    Serve(serve::ServeArgs),
    /// Create a sandbox (prints its id).
    Create(client::CreateArgs),
    /// List sandboxes.
    Ls(client::LsArgs),
    /// Run a command in a sandbox; streams its output, exits with its code
    /// (or, with --detach, prints its id).
    Exec(client::ExecArgs),
    /// List a sandbox's commands (running, exited, gone).
    Ps(processes::PsArgs),
    /// Follow a command's output from a sequence number; exits with its
    /// code.
    Attach(processes::AttachArgs),
    /// Send a signal to a command's process group.
    Kill(processes::KillArgs),
    /// Send this command's stdin to a command started with --stdin-open.
    Stdin(processes::StdinArgs),
    /// Copy a file into or out of a sandbox (SANDBOX:PATH on one side).
    Cp(client::CpArgs),
    /// Delete sandboxes.
    Rm(client::RmArgs),
    /// Show the pools, or set a template's pool target.
    Pool(client::PoolArgs),
    /// Follow the lifecycle event feed.
    Events(client::EventsArgs),
    /// Show the audit trail: who did what to which sandbox, and how it
    /// went.
    Audit(audit::AuditArgs),
    /// Build, list, show and remove the templates of the state directory's
    /// registry.
    Template(template::TemplateArgs),
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Run(_)) {
        default_sigpipe();
    }
    let result = match cli.command {
        Command::Doctor => {
            let report = kiln::doctor::diagnose();
            print!("{report}");
            return if report.vms_can_run_here {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        Command::Run(args) => run::run(*args),
        Command::Serve(args) => serve::serve(args, cli.conn.socket),
        Command::Create(args) => client::run(cli.conn, client::Cmd::Create(args)),
        Command::Ls(args) => client::run(cli.conn, client::Cmd::Ls(args)),
        Command::Exec(args) => client::run(cli.conn, client::Cmd::Exec(args)),
        Command::Ps(args) => client::run(cli.conn, client::Cmd::Ps(args)),
        Command::Attach(args) => client::run(cli.conn, client::Cmd::Attach(args)),
        Command::Kill(args) => client::run(cli.conn, client::Cmd::Kill(args)),
        Command::Stdin(args) => client::run(cli.conn, client::Cmd::Stdin(args)),
        Command::Cp(args) => client::run(cli.conn, client::Cmd::Cp(args)),
        Command::Rm(args) => client::run(cli.conn, client::Cmd::Rm(args)),
        Command::Pool(args) => client::run(cli.conn, client::Cmd::Pool(args)),
        Command::Events(args) => client::run(cli.conn, client::Cmd::Events(args)),
        Command::Audit(args) => client::run(cli.conn, client::Cmd::Audit(args)),
        Command::Template(args) => template::run(args, cli.conn),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Client commands end quietly when their reader goes away (`kiln ps |
/// head`), as Unix tools do, instead of panicking in `println!`: Rust
/// ignores SIGPIPE by default. `serve` and `run` keep ignoring it, so a
/// closed socket or pipe is an error they handle (run then stops its VM).
fn default_sigpipe() {
    // SAFETY: sets the disposition of one signal to its default before any
    // thread is started; no handler code is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
