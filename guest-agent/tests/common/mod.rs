//! Harness: runs the real agent binary on a unix socket in a temp dir.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, ExitStatus};

/// Longest any single read or write in a test may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent under test: `KILN_AGENT_BIN` (e.g. the static release build)
/// or the binary cargo built for this test run.
pub fn agent_binary() -> PathBuf {
    std::env::var_os("KILN_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln-agent")))
}

/// A temp directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "kiln-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent; killed (by pid) and reaped on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the agent with extra arguments after `--listen-unix PATH`.
    pub fn start_with(extra: &[&std::ffi::OsStr]) -> Self {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(agent_binary())
            .arg("--listen-unix")
            .arg(&socket)
            .args(extra)
            .env("KILN_TEST_SECRET", "agent-env-must-not-leak")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let agent = Self { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.socket).is_err() {
            assert!(Instant::now() < deadline, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        s
    }

    /// Runs a request and collects everything.
    pub fn run(&self, req: &ExecRequest, stdin: &[u8]) -> Output {
        let mut s = self.connect();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = client::exec(
            &mut s,
            req,
            stdin,
            |d| stdout.extend_from_slice(d),
            |d| stderr.extend_from_slice(d),
        )
        .expect("exec");
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Asserts the agent process is still alive.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "agent exited"
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// `sh -c script`.
pub fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..ExecRequest::default()
    }
}

/// Pids of live (or zombie) processes in process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces):
        // state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Waits up to `limit` for process group `pgid` to be empty.
pub fn wait_group_empty(pgid: i32, limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let members = group_members(pgid);
        if members.is_empty() || Instant::now() >= deadline {
            return members;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64, enough to compare large outputs.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
