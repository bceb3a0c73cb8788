//! The async client against the real agent binary: the same operations as
//! the blocking client, on tokio.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::{random_bytes, sh, Agent};
use futures_util::StreamExt;
use kiln_agent::async_client::{self, files, AttachEvent, ClientError, ExecEvent};
use kiln_agent::protocol::{ErrorCode, ExecRequest, ExitStatus, OutputStream};
use tokio::net::UnixStream;
use tokio::time::timeout;

/// Bound on every call in these tests.
const LIMIT: Duration = Duration::from_secs(30);

async fn connect(agent: &Agent) -> UnixStream {
    UnixStream::connect(&agent.socket).await.expect("connect")
}

/// Runs an exec, collecting stdout, stderr and the exit.
async fn exec(
    agent: &Agent,
    req: &ExecRequest,
    stdin: Option<&[u8]>,
) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), ClientError> {
    let stream = connect(agent).await;
    let mut events = std::pin::pin!(async_client::exec(stream, req, stdin));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(event) = timeout(LIMIT, events.next()).await.expect("in time") {
        match event? {
            ExecEvent::Stdout(d) => out.extend(d),
            ExecEvent::Stderr(d) => err.extend(d),
            ExecEvent::Exit(status) => return Ok((out, err, status)),
        }
    }
    panic!("exec stream ended without an exit");
}

/// Attaches and collects (gap, stdout, last event).
async fn attach(
    agent: &Agent,
    id: u64,
    after_seq: u64,
    follow: bool,
) -> (Option<(u64, u64)>, Vec<u8>, AttachEvent) {
    let stream = connect(agent).await;
    let mut events = std::pin::pin!(async_client::attach(stream, id, after_seq, follow));
    let mut gap = None;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(event) = timeout(LIMIT, events.next()).await.expect("in time") {
        match event.expect("event") {
            AttachEvent::Gap(g) => gap = Some((g.first_seq, g.last_seq)),
            AttachEvent::Output(c) if c.stream == OutputStream::Stdout => out.extend(c.data),
            AttachEvent::Output(_) => {}
            end => last = Some(end),
        }
    }
    (gap, out, last.expect("an end event"))
}

async fn wait(agent: &Agent, id: u64, within: Duration) -> Option<ExitStatus> {
    let mut s = connect(agent).await;
    timeout(LIMIT, async_client::wait(&mut s, id, within))
        .await
        .expect("in time")
        .expect("wait")
}

fn code<T: std::fmt::Debug>(res: Result<T, ClientError>) -> ErrorCode {
    match res {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_and_exec_with_duplex_stdin() {
    let agent = Agent::start();
    let pong = async_client::ping(&mut connect(&agent).await)
        .await
        .expect("ping");
    assert_eq!(pong.agent_version, env!("CARGO_PKG_VERSION"));

    let (out, err, status) = exec(&agent, &sh("echo out; echo err >&2; exit 3"), None)
        .await
        .expect("exec");
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(status.code, Some(3));

    // 4 MiB through cat: stdin is sent while output is read.
    let data = random_bytes(4 << 20, 9);
    let cat = ExecRequest {
        argv: vec!["cat".into()],
        ..ExecRequest::default()
    };
    let (out, _, status) = exec(&agent, &cat, Some(&data)).await.expect("cat");
    assert_eq!(status.code, Some(0));
    assert!(out == data, "stdin did not round trip");

    let refused = exec(&agent, &ExecRequest::default(), None).await;
    assert_eq!(code(refused), ErrorCode::BadRequest);
}

#[tokio::test]
async fn processes_outlive_the_connection() {
    let agent = Agent::start_with(&[
        OsStr::new("--setting"),
        OsStr::new("kiln.output_buffer_kib=64"),
    ]);
    let id = async_client::start(&mut connect(&agent).await, &sh("echo a; sleep 0.3; echo b"))
        .await
        .expect("start");
    // Follow live from the start, on a fresh connection.
    let (gap, out, end) = attach(&agent, id, 0, true).await;
    assert_eq!((gap, out.as_slice()), (None, &b"a\nb\n"[..]));
    let AttachEvent::Exited(status) = end else {
        panic!("{end:?}");
    };
    assert_eq!(status.code, Some(0));
    // From seq 1: the rest.
    let (_, out, _) = attach(&agent, id, 1, false).await;
    assert_eq!(out, b"b\n");

    // Evicted output: a gap, then the true tail.
    let id = async_client::start(&mut connect(&agent).await, &sh("seq 1 100000"))
        .await
        .expect("start");
    assert!(wait(&agent, id, Duration::from_secs(30)).await.is_some());
    let (gap, tail, _) = attach(&agent, id, 0, false).await;
    let (first, last) = gap.expect("gap");
    assert_eq!(first, 1);
    assert!(last > 1);
    let expected: Vec<u8> = (1..=100_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(!tail.is_empty() && expected.ends_with(&tail));

    let list = async_client::list(&mut connect(&agent).await)
        .await
        .expect("list");
    assert_eq!(list.len(), 2);
    let status = async_client::collect(&mut connect(&agent).await, id)
        .await
        .expect("collect");
    assert_eq!(status.code, Some(0));
    assert_eq!(
        code(async_client::collect(&mut connect(&agent).await, id).await),
        ErrorCode::NoSuchProcess
    );
}

#[tokio::test]
async fn stdin_signal_and_wait() {
    let agent = Agent::start();
    let req = ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        ..ExecRequest::default()
    };
    let id = async_client::start(&mut connect(&agent).await, &req)
        .await
        .expect("start");
    let mut s = connect(&agent).await;
    assert_eq!(
        async_client::write_stdin(&mut s, id, 0, b"abc")
            .await
            .expect("w"),
        3
    );
    let mut s = connect(&agent).await;
    assert_eq!(
        async_client::write_stdin(&mut s, id, 0, b"abc")
            .await
            .expect("retry"),
        3
    );
    let mut s = connect(&agent).await;
    assert_eq!(
        code(async_client::write_stdin(&mut s, id, 9, b"x").await),
        ErrorCode::StdinGap
    );
    async_client::close_stdin(&mut connect(&agent).await, id)
        .await
        .expect("close");
    assert_eq!(
        wait(&agent, id, Duration::from_secs(10))
            .await
            .map(|s| s.code),
        Some(Some(0))
    );
    assert_eq!(attach(&agent, id, 0, true).await.1, b"abc");

    let id = async_client::start(&mut connect(&agent).await, &sh("exec sleep 1000"))
        .await
        .expect("start");
    assert_eq!(wait(&agent, id, Duration::from_millis(200)).await, None);
    async_client::signal(&mut connect(&agent).await, id, 9)
        .await
        .expect("signal");
    let status = wait(&agent, id, Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(status.signal, Some(9));
}

#[tokio::test]
async fn files_round_trip_with_checksums() {
    let root = common::TempDir::new("async-files");
    // Relative paths start at the sandbox user's home.
    std::fs::create_dir_all(root.path().join("home/sandbox")).expect("home");
    let agent = Agent::start_with(&[OsStr::new("--files-root"), root.path().as_os_str()]);
    let data = random_bytes(1 << 20, 3);
    let written = files::upload(&mut connect(&agent).await, "d/blob", Some(0o600), &data[..])
        .await
        .expect("upload");
    assert_eq!(written.size, data.len() as u64);
    assert_eq!(
        std::fs::read(root.path().join("home/sandbox/d/blob")).expect("on disk"),
        data
    );

    let back = files::download_to_vec(connect(&agent).await, "d/blob", 2 << 20)
        .await
        .expect("download");
    assert!(back == data, "download differs");
    let too_small = files::download_to_vec(connect(&agent).await, "d/blob", 1000).await;
    assert!(matches!(too_small, Err(files::FilesError::Sink(_))));

    let entry = files::stat(&mut connect(&agent).await, "d/blob")
        .await
        .expect("stat");
    assert_eq!((entry.size, entry.mode), (data.len() as u64, 0o600));
    files::mkdir(&mut connect(&agent).await, "d/sub/x", true, None)
        .await
        .expect("mkdir");
    files::rename(&mut connect(&agent).await, "d/blob", "d/sub/blob")
        .await
        .expect("rename");
    let mut names: Vec<String> = files::list_dir(&mut connect(&agent).await, "d/sub")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["blob", "x"]);
    files::remove(&mut connect(&agent).await, "d", true)
        .await
        .expect("remove");
    let missing = files::stat(&mut connect(&agent).await, "d").await;
    assert_eq!(
        missing.expect_err("gone").agent_code(),
        Some(ErrorCode::NotFound)
    );
    let missing = files::download_to_vec(connect(&agent).await, "nope", 10).await;
    assert_eq!(
        missing.expect_err("missing").agent_code(),
        Some(ErrorCode::NotFound)
    );
}
