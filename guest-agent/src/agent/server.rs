//! Accept loop and per-connection request dispatch.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SendError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kiln_agent::protocol::{
    read_message, write_message, ErrorCode, FrameError, Message, Pong, ProtocolError,
};

use super::conn::Conn;
use super::exec;
use super::files;
use super::klog::{chain, klog};
use super::listener::Listener;
use super::power;
use super::process::{self, Table};
use super::sandbox::Sandbox;

/// Most connections served at once; more get a `Busy` error.
const MAX_CONNECTIONS: usize = 64;
/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block on a host that does not read.
/// A host that stalls longer than this loses its exec (the program is
/// killed), so a stuck host cannot pin guest resources forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Write timeout for the `Busy` reply sent from the accept loop.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// Connection threads kept waiting for the next connection once theirs
/// ended: a new connection then costs no thread, whose stack would be
/// fresh pages (each a nested-paging fault in a restored clone).
const IDLE_WORKERS: usize = 4;

/// What `Shutdown` does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// PID 1 in a VM: reset the machine.
    Guest,
    /// A process on the host: remove the socket (if any) and exit.
    Host(Option<PathBuf>),
}

/// State shared by every connection.
pub struct Server {
    /// When the agent started (for `Pong::uptime_ms`).
    pub started: Instant,
    /// What `Shutdown` does.
    pub mode: Mode,
    /// Where programs run (and where request paths are resolved).
    pub sandbox: Sandbox,
    /// Where file requests are confined (`None`: refused).
    pub files: Option<files::Config>,
    /// Every process the agent runs (`Start` and `Exec` alike).
    pub table: Arc<Table>,
    active: AtomicUsize,
    /// Idle connection threads, each waiting on its channel.
    idle: Mutex<Vec<SyncSender<Conn>>>,
}

impl Server {
    /// Creates the shared state.
    pub fn new(
        started: Instant,
        mode: Mode,
        sandbox: Sandbox,
        files: Option<files::Config>,
        table: Arc<Table>,
    ) -> Arc<Self> {
        Arc::new(Self {
            started,
            mode,
            sandbox,
            files,
            table,
            active: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Accepts connections forever, one thread each.
    pub fn serve(self: &Arc<Self>, listener: &Listener) -> ! {
        loop {
            let conn = match listener.accept() {
                Ok(c) => c,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        klog!("accept failed: {e}");
                        // EMFILE and friends: let other connections finish.
                        thread::sleep(Duration::from_millis(100));
                    }
                    continue;
                }
            };
            self.dispatch(conn);
        }
    }

    fn dispatch(self: &Arc<Self>, mut conn: Conn) {
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
            let _ = write_message(
                &mut conn,
                &Message::error(ErrorCode::Busy, "too many connections"),
            );
            return;
        }
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(worker) = idle else { break };
            match worker.send(conn) {
                Ok(()) => return,
                // That thread is gone: try the next.
                Err(SendError(back)) => conn = back,
            }
        }
        let server = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .spawn(move || server.work(conn));
        if let Err(e) = spawned {
            self.active.fetch_sub(1, Ordering::SeqCst);
            klog!("cannot start connection thread: {e}");
        }
    }

    /// A connection thread: serves `conn`, then waits for another one while
    /// fewer than [`IDLE_WORKERS`] threads wait.
    fn work(&self, mut conn: Conn) {
        loop {
            self.handle(&mut conn);
            conn.shutdown();
            drop(conn);
            self.active.fetch_sub(1, Ordering::SeqCst);
            let (worker, next) = mpsc::sync_channel(1);
            {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() >= IDLE_WORKERS {
                    return;
                }
                idle.push(worker);
            }
            conn = match next.recv() {
                Ok(c) => c,
                Err(_) => return,
            };
        }
    }

    fn handle(&self, conn: &mut Conn) {
        let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let request = match read_message(conn) {
            Ok(msg) => msg,
            Err(ProtocolError::Frame(FrameError::Closed)) => return,
            Err(e) => {
                let detail = chain(&e);
                klog!("bad request: {detail}");
                let _ = write_message(conn, &Message::error(e.code(), detail));
                return;
            }
        };
        match request {
            Message::Ping => {
                let pong = Pong {
                    agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                    uptime_ms: u64::try_from(self.started.elapsed().as_millis())
                        .unwrap_or(u64::MAX),
                    sandbox: self.sandbox.description().to_owned(),
                };
                let _ = write_message(conn, &Message::Pong(pong));
            }
            Message::Exec(req) => exec::run(conn, &req, &self.table, &self.sandbox),
            Message::Shutdown => self.shutdown(conn),
            Message::Resume(resume) => self.resume(conn, &resume),
            request @ (Message::FileWrite(_)
            | Message::FileRead(_)
            | Message::ListDir(_)
            | Message::Stat(_)
            | Message::Remove(_)
            | Message::Mkdir(_)
            | Message::Rename(_)) => files::serve(conn, request, self.files.as_ref()),
            request @ (Message::Start(_)
            | Message::ListProcesses
            | Message::Attach(_)
            | Message::Wait(_)
            | Message::WriteStdin(_)
            | Message::CloseStdin(_)
            | Message::Signal(_)
            | Message::Collect(_)) => {
                process::serve::serve(conn, request, &self.table, &self.sandbox)
            }
            other => {
                let detail = format!("{:?} is not a request", other.kind());
                let _ = write_message(conn, &Message::error(ErrorCode::BadRequest, detail));
            }
        }
    }

    /// Reseeds the RNG and sets the clock of a restored VM. An agent on
    /// the host leaves the host's RNG and clock alone.
    fn resume(&self, conn: &mut Conn, resume: &kiln_agent::protocol::Resume) {
        let result = match &self.mode {
            Mode::Guest => super::resume::apply(resume),
            Mode::Host(_) => Ok(()),
        };
        let reply = match result {
            Ok(()) => Message::Ok,
            Err(e) => {
                let detail = chain(&e);
                klog!("resume: {detail}");
                Message::error(ErrorCode::Internal, detail)
            }
        };
        let _ = write_message(conn, &reply);
    }

    fn shutdown(&self, conn: &mut Conn) {
        if write_message(conn, &Message::Ok).is_ok() {
            power::wait_for_host_close(conn);
        }
        match &self.mode {
            Mode::Guest => power::reboot(true),
            Mode::Host(path) => {
                klog!("shutdown requested, exiting");
                if let Some(path) = path {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
        }
    }
}
