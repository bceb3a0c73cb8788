//! `kiln-agent`: PID 1 of a kiln microVM (or, with `--listen-unix`, an
//! ordinary process on the host for testing). See `agent` for the logic.

mod agent;

fn main() -> std::process::ExitCode {
    agent::main()
}
