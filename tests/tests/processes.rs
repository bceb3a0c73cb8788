//! Processes in a real guest outlive the connection that started them.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use kiln_agent::client::{process, AttachEvent};
use kiln_agent::protocol::{ExecRequest, OutputStream};
use kiln_e2e::vm::{boot, TestVm};

const SHUTDOWN: Duration = Duration::from_secs(30);
/// Generous: the testbed is an order of magnitude slower than native.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

fn connect(vm: &TestVm) -> UnixStream {
    let s = vm.connect().expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

#[test]
fn a_process_survives_a_dropped_connection_and_is_attached_again() {
    let vm = boot();
    let req = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo one; sleep 2; echo two".into(),
        ],
        timeout_ms: Some(120_000),
        ..ExecRequest::default()
    };
    let id = process::start(&mut connect(&vm), &req).expect("start");

    // Follow until the first line, then drop the connection mid-stream.
    let mut first_seq = None;
    {
        let mut s = connect(&vm);
        for event in process::attach(&mut s, id, 0, true).expect("attach") {
            if let AttachEvent::Output(chunk) = event.expect("event") {
                assert_eq!(chunk.stream, OutputStream::Stdout);
                assert_eq!(chunk.data, b"one\n");
                first_seq = Some(chunk.seq);
                break;
            }
        }
    }
    let first_seq = first_seq.expect("first line");

    // Attach again from there: the rest, then the exit.
    let mut rest = Vec::new();
    let mut exit = None;
    let mut s = connect(&vm);
    for event in process::attach(&mut s, id, first_seq, true).expect("attach again") {
        match event.expect("event") {
            AttachEvent::Output(chunk) => rest.extend(chunk.data),
            AttachEvent::Exited(status) => exit = Some(status),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rest, b"two\n");
    let exit = exit.expect("exit");
    assert_eq!(exit.code, Some(0));

    // From 0, everything is still there; then it can be collected.
    let mut s = connect(&vm);
    let all: Vec<u8> = process::attach(&mut s, id, 0, false)
        .expect("attach from 0")
        .filter_map(|e| match e.expect("event") {
            AttachEvent::Output(chunk) => Some(chunk.data),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(all, b"one\ntwo\n");
    let listed = process::list(&mut connect(&vm)).expect("list");
    assert!(listed.iter().any(|p| p.id == id && p.exit == Some(exit)));
    assert_eq!(
        process::collect(&mut connect(&vm), id).expect("collect"),
        exit
    );

    vm.shutdown(SHUTDOWN).expect("shutdown");
}
