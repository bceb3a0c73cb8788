//! The process table through the real agent binary: processes outlive
//! their connections; attach, gaps, stdin offsets, signals, wait, bounds.

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::{sh, wait_group_empty, Agent};
use kiln_agent::client::{process, AttachEvent, ClientError};
use kiln_agent::protocol::{ErrorCode, ExecRequest, ExitStatus, Gap, OutputStream};

/// Output of an attach: (gap, chunks as (seq, stream, data), end event).
struct Attached {
    gap: Option<Gap>,
    chunks: Vec<(u64, OutputStream, Vec<u8>)>,
    end: AttachEvent,
}

impl Attached {
    fn stdout(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|c| c.1 == OutputStream::Stdout)
            .flat_map(|c| c.2.iter().copied())
            .collect()
    }

    fn exit(&self) -> ExitStatus {
        match self.end {
            AttachEvent::Exited(status) => status,
            ref other => panic!("expected an exit, got {other:?}"),
        }
    }
}

fn attach(agent: &Agent, id: u64, after_seq: u64, follow: bool) -> Attached {
    let mut s = agent.connect();
    let mut out = Attached {
        gap: None,
        chunks: Vec::new(),
        end: AttachEvent::CaughtUp(0),
    };
    for event in process::attach(&mut s, id, after_seq, follow).expect("attach") {
        match event.expect("event") {
            AttachEvent::Gap(gap) => {
                assert!(
                    out.gap.is_none() && out.chunks.is_empty(),
                    "gap comes first"
                );
                out.gap = Some(gap);
            }
            AttachEvent::Output(c) => out.chunks.push((c.seq, c.stream, c.data)),
            end => out.end = end,
        }
    }
    let seqs: Vec<u64> = out.chunks.iter().map(|c| c.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    out
}

fn start(agent: &Agent, req: &ExecRequest) -> u64 {
    process::start(&mut agent.connect(), req).expect("start")
}

fn wait(agent: &Agent, id: u64, timeout: Duration) -> Option<ExitStatus> {
    process::wait(&mut agent.connect(), id, timeout).expect("wait")
}

fn agent_code<T: std::fmt::Debug>(res: Result<T, ClientError>) -> ErrorCode {
    match res {
        Err(ClientError::Agent { code, .. }) => code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

const SIGTERM: i32 = 15;

fn setting(word: &str) -> [&OsStr; 2] {
    [OsStr::new("--setting"), OsStr::new(word)]
}

#[test]
fn output_survives_the_connection_and_replays_from_any_seq() {
    let agent = Agent::start();
    let script = "for i in 1 2 3 4 5; do echo line$i; echo err$i >&2; sleep 0.05; done";
    // Start, and hang up at once: the process does not depend on it.
    let id = start(&agent, &sh(script));
    let status = wait(&agent, id, Duration::from_secs(20)).expect("exited");
    assert_eq!(status.code, Some(0));

    let all = attach(&agent, id, 0, false);
    assert_eq!(all.gap, None);
    assert_eq!(all.stdout(), b"line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(all.exit(), status);
    assert_eq!(all.chunks.first().map(|c| c.0), Some(1));
    let stderr: Vec<u8> = all
        .chunks
        .iter()
        .filter(|c| c.1 == OutputStream::Stderr)
        .flat_map(|c| c.2.clone())
        .collect();
    assert_eq!(stderr, b"err1\nerr2\nerr3\nerr4\nerr5\n");

    // From a seq: exactly the chunks after it.
    let mid = all.chunks[all.chunks.len() / 2].0;
    let rest = attach(&agent, id, mid, true);
    assert_eq!(rest.gap, None);
    let want: Vec<_> = all.chunks.iter().filter(|c| c.0 > mid).cloned().collect();
    assert_eq!(rest.chunks, want);
    assert_eq!(rest.exit(), status);

    // From the end: nothing but the exit.
    let last = all.chunks.last().map_or(0, |c| c.0);
    let none = attach(&agent, id, last, false);
    assert!(none.chunks.is_empty());
    assert_eq!(none.exit(), status);
}

#[test]
fn attach_follows_a_running_process_and_catches_up_without_follow() {
    let agent = Agent::start();
    let id = start(&agent, &sh("echo a; sleep 0.6; echo b"));
    // Without follow: what is there now, then CaughtUp.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let got = attach(&agent, id, 0, false);
        if !got.chunks.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first.stdout(), b"a\n");
    assert_eq!(first.end, AttachEvent::CaughtUp(1));
    // With follow, from there: the rest, live, and the exit.
    let rest = attach(&agent, id, 1, true);
    assert_eq!(rest.stdout(), b"b\n");
    assert_eq!(rest.exit().code, Some(0));
}

#[test]
fn evicted_output_is_reported_as_a_gap_then_the_rest() {
    let agent = Agent::start_with(&setting("kiln.output_buffer_kib=64"));
    // ~1.3 MB of numbered lines: far more than the 64 KiB ring.
    let id = start(&agent, &sh("seq 1 200000"));
    assert_eq!(
        wait(&agent, id, Duration::from_secs(60)).map(|s| s.code),
        Some(Some(0))
    );
    let expected: Vec<u8> = (1..=200_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let got = attach(&agent, id, 0, false);
    let gap = got.gap.expect("a gap");
    assert_eq!(gap.first_seq, 1);
    assert_eq!(got.chunks.first().map(|c| c.0), Some(gap.last_seq + 1));
    let tail = got.stdout();
    assert!(
        !tail.is_empty() && tail.len() <= 128 * 1024,
        "{}",
        tail.len()
    );
    assert!(expected.ends_with(&tail), "the rest is the true tail");
    assert_eq!(got.exit().code, Some(0));

    // A reader already past the gap gets no gap.
    let from = gap.last_seq + 1;
    let later = attach(&agent, id, from, false);
    assert_eq!(later.gap, None);
    let want: Vec<u64> = got
        .chunks
        .iter()
        .map(|c| c.0)
        .filter(|s| *s > from)
        .collect();
    let seqs: Vec<u64> = later.chunks.iter().map(|c| c.0).collect();
    assert_eq!(seqs, want);
    // One partly inside it gets just the part it missed.
    let partly = attach(&agent, id, gap.last_seq - 1, false);
    assert_eq!(
        partly.gap,
        Some(Gap {
            first_seq: gap.last_seq,
            last_seq: gap.last_seq
        })
    );
}

#[test]
fn a_process_keeps_running_with_no_connection() {
    let agent = Agent::start();
    let marker = agent.dir.path().join("marker");
    let script = format!(
        "sleep 0.5; echo done > '{}'; echo finished",
        marker.display()
    );
    let id = start(&agent, &sh(&script));
    // No connection at all while it runs.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "done\n");
    let list = process::list(&mut agent.connect()).expect("list");
    let info = list.iter().find(|p| p.id == id).expect("listed");
    assert_eq!(info.exit.map(|e| e.code), Some(Some(0)));
    assert_eq!(info.argv, ["sh", "-c", script.as_str()]);
    assert!(info.started_unix_ms > 1_600_000_000_000, "{info:?}");
    assert_eq!((info.first_seq, info.last_seq), (1, 1));
    assert!(!info.stdin_open);
    assert_eq!(attach(&agent, id, 0, true).stdout(), b"finished\n");
}

#[test]
fn stdin_retries_are_not_written_twice_and_gaps_are_refused() {
    let agent = Agent::start();
    let req = ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        ..ExecRequest::default()
    };
    let id = start(&agent, &req);
    let write = |offset, data: &[u8]| process::write_stdin(&mut agent.connect(), id, offset, data);
    assert_eq!(write(0, b"hello ").expect("write"), 6);
    // The same bytes again, as after a lost ack.
    assert_eq!(write(0, b"hello ").expect("retry"), 6);
    // Overlapping: only the new part goes in.
    assert_eq!(write(3, b"lo world").expect("overlap"), 11);
    assert_eq!(
        agent_code(write(20, b"!")),
        ErrorCode::StdinGap,
        "a gap is refused"
    );
    let info = process::list(&mut agent.connect()).expect("list");
    assert!(info.iter().any(|p| p.id == id && p.stdin_open));
    process::close_stdin(&mut agent.connect(), id).expect("close");
    assert_eq!(agent_code(write(11, b"late")), ErrorCode::StdinClosed);
    let status = wait(&agent, id, Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code, Some(0));
    assert_eq!(attach(&agent, id, 0, true).stdout(), b"hello world");
}

#[test]
fn large_stdin_goes_through_in_acknowledged_pieces() {
    let agent = Agent::start();
    let data = common::random_bytes(3 << 20, 5);
    let req = ExecRequest {
        stdin: true,
        ..sh("cat > /dev/null; echo ok")
    };
    let id = start(&agent, &req);
    let accepted = process::write_stdin_all(|| Ok(agent.connect()), id, 0, &data).expect("all");
    assert_eq!(accepted, data.len() as u64);
    process::close_stdin(&mut agent.connect(), id).expect("close");
    assert_eq!(attach(&agent, id, 0, true).stdout(), b"ok\n");
}

#[test]
fn signal_reaches_the_whole_group() {
    let agent = Agent::start();
    let id = start(&agent, &sh("echo $$; sleep 1000 & sleep 1000"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let pgid: i32 = loop {
        let got = attach(&agent, id, 0, false);
        if got.stdout().ends_with(b"\n") {
            break String::from_utf8_lossy(&got.stdout())
                .trim()
                .parse()
                .expect("pid");
        }
        assert!(Instant::now() < deadline, "no pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(common::group_members(pgid).len() >= 2);
    assert_eq!(
        agent_code(process::signal(&mut agent.connect(), id, 0)),
        ErrorCode::BadRequest
    );
    process::signal(&mut agent.connect(), id, SIGTERM).expect("signal");
    let status = wait(&agent, id, Duration::from_secs(10)).expect("exit");
    assert_eq!(status.signal, Some(SIGTERM));
    let left = wait_group_empty(pgid, Duration::from_secs(5));
    assert!(left.is_empty(), "group {pgid} still has {left:?}");
    assert_eq!(
        agent_code(process::signal(&mut agent.connect(), id, 9)),
        ErrorCode::NotRunning
    );
}

#[test]
fn wait_times_out_while_it_runs_then_returns_the_status() {
    let agent = Agent::start();
    let id = start(&agent, &sh("exec sleep 1000"));
    let started = Instant::now();
    assert_eq!(wait(&agent, id, Duration::from_millis(300)), None);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        agent_code(process::collect(&mut agent.connect(), id)),
        ErrorCode::StillRunning
    );
    process::signal(&mut agent.connect(), id, 9).expect("kill");
    let status = wait(&agent, id, Duration::from_secs(10)).expect("exit");
    assert_eq!(status.signal, Some(9));
    // A timeout set at start kills it by itself.
    let req = ExecRequest {
        timeout_ms: Some(300),
        ..sh("exec sleep 1000")
    };
    let id = start(&agent, &req);
    let status = wait(&agent, id, Duration::from_secs(10)).expect("exit");
    assert!(status.timed_out, "{status:?}");
}

#[test]
fn finished_processes_are_kept_then_collected_or_evicted_oldest_first() {
    let agent = Agent::start_with(&setting("kiln.max_finished=2"));
    let ids: Vec<u64> = (1..=3)
        .map(|code| {
            let id = start(&agent, &sh(&format!("exit {code}")));
            assert_eq!(
                wait(&agent, id, Duration::from_secs(10)).map(|s| s.code),
                Some(Some(code))
            );
            id
        })
        .collect();
    let listed: Vec<u64> = process::list(&mut agent.connect())
        .expect("list")
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, ids[1..], "the oldest was evicted");
    assert_eq!(
        agent_code(process::collect(&mut agent.connect(), ids[0])),
        ErrorCode::NoSuchProcess
    );
    let status = process::collect(&mut agent.connect(), ids[1]).expect("collect");
    assert_eq!(status.code, Some(2));
    assert_eq!(
        agent_code(process::collect(&mut agent.connect(), ids[1])),
        ErrorCode::NoSuchProcess,
        "collected once"
    );
    assert_eq!(
        agent_code(process::wait(&mut agent.connect(), 999, Duration::ZERO)),
        ErrorCode::NoSuchProcess
    );
}

#[test]
fn the_live_process_limit_refuses_then_recovers() {
    let agent = Agent::start_with(&setting("kiln.max_processes=2"));
    let a = start(&agent, &sh("exec sleep 1000"));
    let _b = start(&agent, &sh("exec sleep 1000"));
    let refused = process::start(&mut agent.connect(), &sh("true"));
    assert_eq!(agent_code(refused), ErrorCode::TooManyProcesses);
    // Exec uses the same table.
    let mut s = agent.connect();
    let refused = kiln_agent::client::exec(&mut s, &sh("true"), &[], |_| {}, |_| {});
    assert_eq!(agent_code(refused), ErrorCode::TooManyProcesses);
    process::signal(&mut agent.connect(), a, 9).expect("kill");
    wait(&agent, a, Duration::from_secs(10)).expect("exit");
    let c = start(&agent, &sh("exit 4"));
    assert_eq!(
        wait(&agent, c, Duration::from_secs(10)).map(|s| s.code),
        Some(Some(4))
    );
}

#[test]
fn exec_leaves_nothing_in_the_table() {
    let agent = Agent::start();
    assert_eq!(agent.run(&sh("echo hi"), &[]).stdout, b"hi\n");
    // A hung-up exec is killed and collected too.
    let mut s = agent.connect();
    kiln_agent::protocol::write_message(
        &mut s,
        &kiln_agent::protocol::Message::Exec(sh("exec sleep 1000")),
    )
    .expect("exec");
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = process::list(&mut agent.connect()).expect("list");
        if list.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {list:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_process_requests_are_clear_errors() {
    let agent = Agent::start();
    assert_eq!(
        agent_code(process::start(
            &mut agent.connect(),
            &ExecRequest::default()
        )),
        ErrorCode::BadRequest
    );
    assert_eq!(
        agent_code(process::start(
            &mut agent.connect(),
            &ExecRequest {
                argv: vec!["/nonexistent/program".into()],
                ..ExecRequest::default()
            }
        )),
        ErrorCode::SpawnFailed
    );
    let mut s = agent.connect();
    let first = process::attach(&mut s, 42, 0, true)
        .expect("attach")
        .next()
        .expect("one event");
    assert_eq!(agent_code(first), ErrorCode::NoSuchProcess);
    assert_eq!(
        agent_code(process::close_stdin(&mut agent.connect(), 42)),
        ErrorCode::NoSuchProcess
    );
    assert!(process::list(&mut agent.connect())
        .expect("list")
        .is_empty());
}

#[test]
fn hostile_values_are_refused_or_bounded() {
    let agent = Agent::start();
    let req = ExecRequest {
        stdin: true,
        ..sh("cat > /dev/null; echo x")
    };
    let id = start(&agent, &req);
    for signal in [0, -1, 65, i32::MAX, i32::MIN] {
        assert_eq!(
            agent_code(process::signal(&mut agent.connect(), id, signal)),
            ErrorCode::BadRequest,
            "signal {signal}"
        );
    }
    assert_eq!(
        agent_code(process::write_stdin(
            &mut agent.connect(),
            id,
            u64::MAX,
            b"x"
        )),
        ErrorCode::StdinGap
    );
    // A far-future position: nothing to send, caught up at once.
    let mut s = agent.connect();
    let events: Vec<_> = process::attach(&mut s, id, u64::MAX, false)
        .expect("attach")
        .collect::<Result<_, _>>()
        .expect("events");
    assert_eq!(events, [AttachEvent::CaughtUp(0)]);
    process::close_stdin(&mut agent.connect(), id).expect("close");
    process::close_stdin(&mut agent.connect(), id).expect("close twice");
    // The longest wait is cut to the agent's maximum, not refused.
    let status = process::wait(&mut agent.connect(), id, Duration::MAX)
        .expect("wait")
        .expect("exit");
    assert_eq!(status.code, Some(0));
    assert_eq!(attach(&agent, id, 0, false).stdout(), b"x\n");
}
