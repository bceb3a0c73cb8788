//! Ping and shutdown against the real agent binary.

mod common;

use std::time::{Duration, Instant};

use common::Agent;
use kiln_agent::client;

#[test]
fn ping_reports_version_and_uptime() {
    let agent = Agent::start();
    let first = client::ping(&mut agent.connect()).expect("ping");
    assert_eq!(first.agent_version, env!("CARGO_PKG_VERSION"));
    std::thread::sleep(Duration::from_millis(50));
    let second = client::ping(&mut agent.connect()).expect("ping");
    assert!(
        second.uptime_ms >= first.uptime_ms + 50,
        "{first:?} {second:?}"
    );
}

#[test]
fn shutdown_acknowledges_then_exits() {
    let mut agent = Agent::start();
    {
        let mut s = agent.connect();
        client::shutdown(&mut s).expect("shutdown");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!agent.socket.exists(), "socket file removed");
}

#[test]
fn binary_rejects_unknown_arguments_off_pid1() {
    let out = std::process::Command::new(common::agent_binary())
        .arg("--bogus")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(common::agent_binary())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
