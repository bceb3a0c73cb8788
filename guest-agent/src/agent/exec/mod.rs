//! `Exec`: one program whose life is one connection, built on the process
//! table.
//!
//! The connection's handler thread starts the program as a keep-all
//! process (see `super::process`), then forwards its chunks as `Stdout` /
//! `Stderr` frames and ends with `Exit`; a stdin thread reads the rest of
//! the request (stdin frames, or the host hanging up). When the host goes
//! away, sends garbage, or stops reading, the program is killed. Either
//! way the process is collected at the end: an exec leaves nothing in the
//! table.

mod stdin;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use kiln_agent::protocol::{write_message, ErrorCode, ExecRequest, Message, OutputStream};

use super::conn::Conn;
use super::klog::{chain, klog};
use super::process::{BatchEnd, Process, StartError, StartOptions, Table};
use super::sandbox::Sandbox;

/// How often the forwarding loop looks for news from the stdin thread.
const HOST_CHECK: Duration = Duration::from_millis(250);
/// How long a killed exec may take to be over (the supervisor's kill grace
/// plus the cgroup cleanup) before the handler stops waiting for it.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// Something the host did while the program ran.
#[derive(Debug)]
pub enum HostEvent {
    /// The connection closed or failed.
    Gone,
    /// The host sent a frame that does not belong in an exec.
    Bad(ErrorCode, String),
}

/// Where the stdin thread leaves a [`HostEvent`]; the first one wins.
#[derive(Debug, Default)]
pub struct HostWatch(Mutex<Option<HostEvent>>);

impl HostWatch {
    fn set(&self, event: HostEvent) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(event);
    }

    fn take(&self) -> Option<HostEvent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs `req` and streams the result over `conn`; always ends with an
/// `Exit` or `Error` frame unless the host hung up first.
pub fn run(conn: &mut Conn, req: &ExecRequest, table: &Arc<Table>, sandbox: &Sandbox) {
    if let Err(err) = start_and_forward(conn, req, table, sandbox) {
        let msg = chain(&err);
        if err.code() == ErrorCode::Internal {
            klog!("exec: {msg}");
        }
        let _ = write_message(conn, &Message::error(err.code(), msg));
    }
}

fn start_and_forward(
    conn: &mut Conn,
    req: &ExecRequest,
    table: &Arc<Table>,
    sandbox: &Sandbox,
) -> Result<(), StartError> {
    let reader = conn.try_clone().map_err(StartError::Resources)?;
    // Stdin frames may be far apart; only the host hanging up ends them.
    reader
        .set_read_timeout(None)
        .map_err(StartError::Resources)?;
    let process = table.start(req, StartOptions { keep_all: true }, sandbox)?;
    let host = Arc::new(HostWatch::default());
    let feeder = {
        let (process, host) = (Arc::clone(&process), Arc::clone(&host));
        let expect_stdin = req.stdin;
        thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || stdin::feed(reader, &process, expect_stdin, &host))
    };
    let outcome = match feeder {
        Ok(_) => forward(conn, &process, &host),
        Err(e) => Err(Some((
            ErrorCode::Internal,
            chain(&StartError::Resources(e)),
        ))),
    };
    if let Err(reply) = outcome {
        process.kill();
        if let Some((code, message)) = reply {
            let _ = write_message(conn, &Message::error(code, message));
        }
    }
    process.release();
    // Killed or exited, it is over within the supervisor's grace periods.
    if process.wait_exit(FINISH_WAIT).is_some() {
        let _ = table.collect(process.id());
    }
    Ok(())
}

/// Sends every chunk, then `Exit`. `Err` means the exec must be killed,
/// with an error frame to send when there is one.
fn forward(
    conn: &mut Conn,
    process: &Process,
    host: &HostWatch,
) -> Result<(), Option<(ErrorCode, String)>> {
    let mut cursor = 0;
    loop {
        match host.take() {
            Some(HostEvent::Gone) => return Err(None),
            Some(HostEvent::Bad(code, message)) => return Err(Some((code, message))),
            None => {}
        }
        let batch = process.next_batch(cursor, true, HOST_CHECK);
        if let Some(gap) = batch.gap {
            // Cannot happen to a keep-all process; skip rather than stall.
            cursor = gap.last_seq;
        }
        for chunk in batch.chunks {
            let msg = match chunk.stream {
                OutputStream::Stdout => Message::Stdout(chunk.data),
                OutputStream::Stderr => Message::Stderr(chunk.data),
            };
            write_message(conn, &msg).map_err(|_| None)?;
            cursor = chunk.seq;
            process.keep_from(cursor + 1);
        }
        if let Some(BatchEnd::Exited(status)) = batch.end {
            let _ = write_message(conn, &Message::Exit(status));
            return Ok(());
        }
    }
}
