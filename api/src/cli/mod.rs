//! Command-line parsing and dispatch. Errors are printed as a whole chain.

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
    }
}
