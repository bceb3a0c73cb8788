//! Bad clients: malformed frames, hang-ups. The agent must answer with an
//! error (never a crash or a hang) and keep serving.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::{sh, wait_group_empty, Agent};
use kiln_agent::client;
use kiln_agent::protocol::{
    read_message, write_frame, write_message, ErrorCode, FrameHeader, Message, MessageKind,
    MAX_FRAME_PAYLOAD,
};

fn expect_error(agent: &Agent, raw: &[u8], want: ErrorCode) {
    let mut s = agent.connect();
    s.write_all(raw).expect("send");
    match read_message(&mut s).expect("reply") {
        Message::Error { code, message } => {
            assert_eq!(code, want, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn malformed_frames_get_errors_and_agent_keeps_serving() {
    let mut agent = Agent::start();

    expect_error(
        &agent,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ErrorCode::BadFrame,
    );

    let mut wrong_version = FrameHeader { kind: 1, len: 0 }.encode();
    wrong_version[2] = 99;
    expect_error(&agent, &wrong_version, ErrorCode::BadFrame);

    // Announces 4 GiB: must be refused from the header alone.
    let huge = FrameHeader { kind: 0x03, len: 0 }.encode();
    let mut huge = huge.to_vec();
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    expect_error(&agent, &huge, ErrorCode::BadFrame);
    let mut just_over = huge.clone();
    just_over[4..8].copy_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_le_bytes());
    expect_error(&agent, &just_over, ErrorCode::BadFrame);

    let mut unknown_kind = Vec::new();
    write_frame(&mut unknown_kind, 0x42, b"").expect("frame");
    expect_error(&agent, &unknown_kind, ErrorCode::BadRequest);

    let mut garbage_exec = Vec::new();
    write_frame(&mut garbage_exec, MessageKind::Exec as u8, &[0xff; 40]).expect("frame");
    expect_error(&agent, &garbage_exec, ErrorCode::BadRequest);

    // A response kind is not a request.
    let mut pong = Vec::new();
    write_message(&mut pong, &Message::Ok).expect("frame");
    expect_error(&agent, &pong, ErrorCode::BadRequest);

    // Truncated payload, then the client half-closes: error, not a hang.
    let mut s = agent.connect();
    let mut partial = Vec::new();
    write_frame(&mut partial, MessageKind::Exec as u8, &[0u8; 100]).expect("frame");
    s.write_all(&partial[..50]).expect("send");
    s.shutdown(Shutdown::Write).expect("half close");
    let reply = read_message(&mut s).expect("reply");
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::BadFrame,
                ..
            }
        ),
        "{reply:?}"
    );

    agent.assert_alive();
    let pong = client::ping(&mut agent.connect()).expect("ping after garbage");
    assert_eq!(pong.agent_version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn silent_connection_does_not_block_others() {
    let agent = Agent::start();
    let _idle = agent.connect();
    let _half = {
        let mut s = agent.connect();
        s.write_all(&[0x4c, 0x4b]).expect("send half a header");
        s
    };
    client::ping(&mut agent.connect()).expect("ping");
}

#[test]
fn garbage_during_exec_kills_the_program_and_replies_error() {
    let agent = Agent::start();
    let mut s = agent.connect();
    write_message(&mut s, &Message::Exec(sh("echo $$; exec sleep 1000"))).expect("exec");
    let pgid = read_pgid(&mut s);
    s.write_all(b"this is not a frame").expect("garbage");
    let mut saw_error = false;
    loop {
        match read_message(&mut s) {
            Ok(Message::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::BadFrame);
                saw_error = true;
            }
            Ok(Message::Stdout(_) | Message::Stderr(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(saw_error);
    let left = wait_group_empty(pgid, Duration::from_secs(5));
    assert!(left.is_empty(), "group {pgid} survived: {left:?}");
}

#[test]
fn host_hangup_mid_exec_kills_the_process_group() {
    let mut agent = Agent::start();
    let mut s = agent.connect();
    write_message(
        &mut s,
        &Message::Exec(sh("echo $$; sleep 1000 & sleep 1000")),
    )
    .expect("exec");
    let pgid = read_pgid(&mut s);
    assert!(!common::group_members(pgid).is_empty());
    drop(s);
    let left = wait_group_empty(pgid, Duration::from_secs(5));
    assert!(left.is_empty(), "group {pgid} survived hang-up: {left:?}");
    agent.assert_alive();
    client::ping(&mut agent.connect()).expect("ping");
}

#[test]
fn stdin_frames_after_stdin_end_are_rejected() {
    let agent = Agent::start();
    let mut s = agent.connect();
    let req = kiln_agent::protocol::ExecRequest {
        stdin: true,
        ..sh("cat; sleep 1000")
    };
    write_message(&mut s, &Message::Exec(req)).expect("exec");
    write_message(&mut s, &Message::StdinEnd).expect("end");
    write_message(&mut s, &Message::StdinChunk(b"late".to_vec())).expect("chunk");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read until close");
    let mut r = &buf[..];
    let last = std::iter::from_fn(|| read_message(&mut r).ok()).last();
    assert!(
        matches!(
            last,
            Some(Message::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{last:?}"
    );
}

/// Reads stdout frames until a full line with the shell's pid arrives.
fn read_pgid(s: &mut impl Read) -> i32 {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match read_message(s).expect("frame") {
            Message::Stdout(d) => line.extend_from_slice(&d),
            Message::Stderr(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    String::from_utf8_lossy(&line).trim().parse().expect("pid")
}

#[test]
fn connection_flood_gets_busy_then_recovers() {
    let mut agent = Agent::start();
    // The agent serves 64 connections at once; idle ones hold a slot until
    // their request timeout.
    let idle: Vec<_> = (0..64).map(|_| agent.connect()).collect();
    let mut s = agent.connect();
    let err = client::ping(&mut s).expect_err("busy");
    assert!(
        matches!(
            err,
            client::ClientError::Agent {
                code: ErrorCode::Busy,
                ..
            }
        ),
        "{err:?}"
    );
    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client::ping(&mut agent.connect()) {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "still failing: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.assert_alive();
}
