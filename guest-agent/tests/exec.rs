//! Exec through the real agent binary on a unix socket.

mod common;

use std::time::{Duration, Instant};

use common::{checksum, random_bytes, sh, wait_group_empty, Agent};
use kiln_agent::client;
use kiln_agent::protocol::{ErrorCode, ExecRequest};

#[test]
fn exit_code_propagates() {
    let agent = Agent::start();
    let out = agent.run(&sh("exit 3"), &[]);
    assert_eq!(out.status.code, Some(3));
    assert_eq!(out.status.signal, None);
    assert!(!out.status.timed_out);
}

#[test]
fn signal_exit_is_reported() {
    let agent = Agent::start();
    let out = agent.run(&sh("kill -9 $$"), &[]);
    assert_eq!(out.status.signal, Some(9));
    assert_eq!(out.status.code, None);
    assert!(!out.status.timed_out);
}

#[test]
fn stdout_and_stderr_are_both_captured() {
    let agent = Agent::start();
    let out = agent.run(&sh("echo out; echo err >&2; printf 'a\\000b'"), &[]);
    assert_eq!(out.stdout, b"out\na\0b");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn stdin_round_trips_binary_data() {
    let agent = Agent::start();
    let data = random_bytes(100_000, 7);
    let req = ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        ..ExecRequest::default()
    };
    let out = agent.run(&req, &data);
    assert_eq!(out.status.code, Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin did not round trip");
}

#[test]
fn large_stdin_round_trips_with_duplex_client() {
    let agent = Agent::start();
    let data = random_bytes(8 << 20, 11);
    let req = ExecRequest {
        argv: vec!["cat".into()],
        stdin: true,
        timeout_ms: Some(60_000),
        ..ExecRequest::default()
    };
    let mut reader = agent.connect();
    let writer = reader.try_clone().expect("clone");
    let mut stdout = Vec::new();
    let status = client::exec_duplex(
        &mut reader,
        writer,
        &req,
        &data[..],
        |d| stdout.extend_from_slice(d),
        |_| {},
    )
    .expect("exec");
    assert_eq!(status.code, Some(0));
    assert_eq!(checksum(&stdout), checksum(&data));
    assert_eq!(stdout.len(), data.len());
}

#[test]
fn empty_stdin_gives_eof() {
    let agent = Agent::start();
    let req = ExecRequest {
        stdin: true,
        ..sh("wc -c")
    };
    let out = agent.run(&req, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[test]
fn env_and_cwd_are_applied_and_agent_env_is_not_inherited() {
    let agent = Agent::start();
    let cwd = agent
        .dir
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .to_owned();
    let req = ExecRequest {
        env: vec![("FOO".into(), "bar baz".into())],
        cwd: Some(cwd.clone()),
        ..sh("echo \"$FOO\"; pwd; echo \"${KILN_TEST_SECRET:-unset}\"; echo \"$PATH\"")
    };
    let out = agent.run(&req, &[]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "bar baz");
    assert_eq!(
        std::fs::canonicalize(lines[1]).expect("pwd"),
        std::fs::canonicalize(&cwd).expect("cwd")
    );
    assert_eq!(lines[2], "unset");
    assert!(lines[3].contains("/usr/bin"), "default PATH: {}", lines[3]);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let agent = Agent::start();
    let req = ExecRequest {
        timeout_ms: Some(500),
        ..sh("echo $$; sleep 1000 & sleep 1000; ")
    };
    let started = Instant::now();
    let out = agent.run(&req, &[]);
    let elapsed = started.elapsed();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert_eq!(out.status.signal, Some(9));
    assert!(out.status.duration_ms >= 500, "{:?}", out.status);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let pgid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pgid on stdout");
    let left = wait_group_empty(pgid, Duration::from_secs(5));
    assert!(left.is_empty(), "group {pgid} still has {left:?}");
}

#[test]
fn background_jobs_do_not_outlive_the_exec() {
    let agent = Agent::start();
    let started = Instant::now();
    let out = agent.run(&sh("sleep 1000 & echo $$"), &[]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code, Some(0));
    assert!(!out.status.timed_out);
    let pgid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pgid");
    let left = wait_group_empty(pgid, Duration::from_secs(5));
    assert!(left.is_empty(), "group {pgid} still has {left:?}");
}

#[test]
fn ten_mib_of_random_bytes_through_stdout() {
    let agent = Agent::start();
    let data = random_bytes(10 << 20, 42);
    let file = agent.dir.path().join("blob");
    std::fs::write(&file, &data).expect("write blob");
    let req = ExecRequest {
        argv: vec!["cat".into(), file.to_str().expect("utf-8").into()],
        ..ExecRequest::default()
    };
    let out = agent.run(&req, &[]);
    assert_eq!(out.status.code, Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(checksum(&out.stdout), checksum(&data));
}

#[test]
fn spawn_failure_is_an_error_frame_and_agent_keeps_serving() {
    let mut agent = Agent::start();
    for (argv, cwd) in [
        (vec!["/nonexistent/program".to_owned()], None),
        (vec!["true".to_owned()], Some("/nonexistent/dir".to_owned())),
    ] {
        let req = ExecRequest {
            argv,
            cwd,
            ..ExecRequest::default()
        };
        let mut s = agent.connect();
        let err = client::exec(&mut s, &req, &[], |_| {}, |_| {}).expect_err("must fail");
        assert!(
            matches!(
                err,
                client::ClientError::Agent {
                    code: ErrorCode::SpawnFailed,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let err = client::exec(
        &mut agent.connect(),
        &ExecRequest::default(),
        &[],
        |_| {},
        |_| {},
    )
    .expect_err("empty argv");
    assert!(matches!(
        err,
        client::ClientError::Agent {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    agent.assert_alive();
    assert_eq!(agent.run(&sh("exit 5"), &[]).status.code, Some(5));
}

#[test]
fn concurrent_execs_get_their_own_statuses() {
    let agent = Agent::start();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let agent = &agent;
                scope.spawn(move || {
                    let out = agent.run(&sh(&format!("echo {i}; exit {i}")), &[]);
                    (i, out)
                })
            })
            .collect();
        for h in handles {
            let (i, out) = h.join().expect("thread");
            assert_eq!(out.status.code, Some(i));
            assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        }
    });
}

#[test]
fn output_is_streamed_before_exit() {
    let agent = Agent::start();
    let mut s = agent.connect();
    let started = Instant::now();
    let mut first_at = None;
    let status = client::exec(
        &mut s,
        &sh("echo early; sleep 1; echo late"),
        &[],
        |_| {
            first_at.get_or_insert_with(|| started.elapsed());
        },
        |_| {},
    )
    .expect("exec");
    let first_at = first_at.expect("got output");
    assert!(status.duration_ms >= 1000, "{status:?}");
    assert!(
        first_at < Duration::from_millis(900),
        "first chunk at {first_at:?}"
    );
}
