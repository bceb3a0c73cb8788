//! Command-line parsing and dispatch. Errors are printed as a whole chain.

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: microVM sandboxes for AI agents.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check what this host offers for running kiln's VMs (KVM speed, MSHV).
    Doctor,
    /// Boot a microVM, run one command in it, stream its output, exit with its code.
    Run(Box<run::RunArgs>),
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor => {
            let report = kiln::doctor::diagnose();
            print!("{report}");
            if report.vms_can_run_here {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Run(args) => match run::run(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kiln: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
