//! The process commands: `kiln ps`, `kiln attach`, `kiln kill`, `kiln
//! stdin`, and the printing of an exec's events that `kiln exec` shares.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use kiln::model::{ExecEvent, ExecInfo, ExecState, SignalName};
use kiln::Exec;

use super::client::Conn;
use super::output;

/// `kiln ps`.
#[derive(clap::Args)]
pub struct PsArgs {
    /// Sandbox id.
    sandbox: String,
}

/// `kiln attach`.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// Sandbox id.
    sandbox: String,
    /// Exec id.
    exec: String,
    /// Output after this chunk (0: from the start).
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    /// Print what is there now and return instead of following.
    #[arg(long)]
    no_follow: bool,
}

/// `kiln kill`.
#[derive(clap::Args)]
pub struct KillArgs {
    /// Sandbox id.
    sandbox: String,
    /// Exec id.
    exec: String,
    /// Signal, by name (TERM, KILL, INT, ...) or number.
    #[arg(long, short, default_value = "TERM")]
    signal: String,
}

/// `kiln stdin`.
#[derive(clap::Args)]
pub struct StdinArgs {
    /// Sandbox id.
    sandbox: String,
    /// Exec id (started with `kiln exec --detach --stdin-open`).
    exec: String,
    /// Where this input starts in the program's stdin (a retry with the
    /// same offset writes nothing twice); default: after what it has.
    #[arg(long)]
    offset: Option<u64>,
    /// Close the program's stdin afterwards.
    #[arg(long)]
    close: bool,
}

/// Exit code for a command that hit its timeout (as coreutils `timeout`).
const EXIT_TIMED_OUT: u8 = 124;
/// Most bytes `kiln stdin` sends in one go.
const MAX_STDIN: u64 = 8 << 20;
/// Writes in a row that may make no progress before `kiln stdin` gives up
/// (each waits a few seconds for the program to read).
const STALLED_WRITES: u32 = 6;

/// Prints an exec's events (output to stdout and stderr, or every event as
/// a JSON line with `json`) and returns the program's exit code.
pub async fn print_events(mut exec: Exec, json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(event) = exec.next().await {
        let event = event?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&event)?)?;
            out.flush()?;
        }
        match event {
            ExecEvent::Stdout { data, data_b64, .. } if !json => {
                out.write_all(&ExecEvent::bytes(&data, &data_b64))?;
                out.flush()?;
            }
            ExecEvent::Stderr { data, data_b64, .. } if !json => {
                err.write_all(&ExecEvent::bytes(&data, &data_b64))?;
            }
            ExecEvent::Gap { seq, first_seq } if !json => {
                eprintln!(
                    "kiln: output chunks {first_seq}..={seq} were evicted before they were read"
                );
            }
            ExecEvent::CaughtUp { seq } => {
                if !json {
                    eprintln!(
                        "kiln: {} still runs; its output so far ends at seq {seq}",
                        exec.id()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            ExecEvent::Exited { result, .. } => {
                if result.timed_out {
                    eprintln!("kiln: the command timed out; its process group was killed");
                    return Ok(ExitCode::from(EXIT_TIMED_OUT));
                }
                return Ok(match (result.exit_code, result.signal) {
                    (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
                    (None, Some(sig)) => {
                        ExitCode::from(u8::try_from(128 + (sig & 0x7f)).unwrap_or(1))
                    }
                    (None, None) => ExitCode::FAILURE,
                });
            }
            _ => {}
        }
    }
    bail!("the exec stream ended before the command's exit")
}

pub async fn ps(conn: &Conn, a: PsArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let execs = kiln.sandboxes().get(&a.sandbox).await?.processes().await?;
    if conn.json {
        output::json(&execs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = execs.iter().map(ps_row).collect();
    output::table(&["EXEC", "STATE", "EXIT", "STDIN", "SEQ", "COMMAND"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn ps_row(e: &ExecInfo) -> Vec<String> {
    let state = match e.state {
        ExecState::Running => "running",
        ExecState::Exited => "exited",
        ExecState::Gone => "gone",
    };
    let exit = e.result.as_ref().map_or_else(
        || "-".to_string(),
        |r| match (r.exit_code, r.signal, r.timed_out) {
            (_, _, true) => "timeout".into(),
            (Some(c), _, _) => c.to_string(),
            (None, Some(s), _) => format!("signal {s}"),
            (None, None, _) => "?".into(),
        },
    );
    vec![
        e.exec_id.clone(),
        state.into(),
        exit,
        if e.stdin_open { "open" } else { "-" }.into(),
        format!("{}..{}", e.first_seq, e.last_seq),
        e.argv.join(" "),
    ]
}

pub async fn attach(conn: &Conn, a: AttachArgs) -> Result<ExitCode> {
    let kiln = conn.connect().await?;
    let sandbox = kiln.sandboxes().get(&a.sandbox).await?;
    let exec = if a.no_follow {
        sandbox.output_since(&a.exec, a.after_seq).await?
    } else {
        sandbox.attach(&a.exec, a.after_seq).await?
    };
    print_events(exec, conn.json).await
}

pub async fn kill(conn: &Conn, a: KillArgs) -> Result<ExitCode> {
    let signal = match a.signal.parse::<i64>() {
        Ok(n) => SignalName::Number(n),
        Err(_) => SignalName::Name(a.signal),
    }
    .number()?;
    let kiln = conn.connect().await?;
    let sandbox = kiln.sandboxes().get(&a.sandbox).await?;
    sandbox.exec_control(&a.exec).signal(signal).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn stdin(conn: &Conn, a: StdinArgs) -> Result<ExitCode> {
    let mut data = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut data)
        .context("reading stdin")?;
    if data.len() as u64 > MAX_STDIN {
        bail!("kiln stdin sends at most {MAX_STDIN} bytes at a time");
    }
    let kiln = conn.connect().await?;
    let control = kiln
        .sandboxes()
        .get(&a.sandbox)
        .await?
        .exec_control(&a.exec);
    // Explicit offsets from here on, so a retried write is harmless.
    let start = match a.offset {
        Some(o) => o,
        None => control.append_stdin(Vec::new()).await?.accepted,
    };
    let end = start + data.len() as u64;
    let mut at = start;
    let mut stalled = 0;
    while at < end {
        let from = usize::try_from(at - start)?;
        let written = control.write_stdin(at, data[from..].to_vec()).await?;
        if written.accepted <= at {
            stalled += 1;
            if stalled >= STALLED_WRITES {
                bail!("the program stopped reading its stdin at offset {at}");
            }
        } else {
            stalled = 0;
        }
        at = written.accepted.max(at);
    }
    if a.close {
        control.close_stdin().await?;
    }
    if conn.json {
        output::json(&serde_json::json!({"accepted": at, "closed": a.close}))?;
    } else {
        println!("{at}");
    }
    Ok(ExitCode::SUCCESS)
}
