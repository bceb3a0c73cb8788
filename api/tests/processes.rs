//! Processes through the daemon, with real host agents as VMs: an exec
//! outlives the client that started it (unless it asked to be killed on
//! disconnect), attach resumes from a sequence number and shows a gap
//! for evicted output, stdin writes are offset-tagged (a retry is not
//! written twice), signals reach the whole process group, listings, a
//! SIGKILLed daemon finds its execs again, and the CLI commands.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{error_code, http, Daemon};
use futures_util::StreamExt;
use kiln::model::{ExecEvent, ExecInfo, ExecState, SandboxSpec};
use kiln::{Error, Kiln, Sandbox};

/// Waits (up to 20 s) until `check` accepts exec `id`'s listing entry.
async fn wait_for(sandbox: &Sandbox, id: &str, what: &str, check: impl Fn(&ExecInfo) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = sandbox.processes().await.expect("list");
        let e = list.iter().find(|e| e.exec_id == id).expect("listed");
        if check(e) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything an exec stream says after its start: (stdout, gaps, last).
async fn drain(mut exec: kiln::Exec) -> (String, Vec<(u64, u64)>, ExecEvent) {
    let (mut out, mut gaps) = (String::new(), Vec::new());
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), exec.next())
        .await
        .expect("an event in time")
    {
        match e.expect("event") {
            ExecEvent::Stdout { data, data_b64, .. } => {
                out.push_str(&String::from_utf8_lossy(&ExecEvent::bytes(
                    &data, &data_b64,
                )));
            }
            ExecEvent::Gap { seq, first_seq } => gaps.push((first_seq, seq)),
            ExecEvent::Started { .. } | ExecEvent::Stderr { .. } => {}
            last => return (out, gaps, last),
        }
    }
    panic!("the stream ended without an end event");
}

/// Exec `id`'s output from the start, to its end.
async fn output_of(sandbox: &Sandbox, id: &str) -> kiln::ExecOutput {
    sandbox
        .attach(id, 0)
        .await
        .expect("attach")
        .output()
        .await
        .expect("output")
}

/// A daemon on a fresh dir with one sandbox; `agent_args` go to each host
/// agent.
async fn daemon_with_sandbox_and(
    name: &str,
    agent_args: &str,
) -> (std::path::PathBuf, Daemon, Kiln, Sandbox) {
    let dir = common::scratch(name);
    let mut config = common::host_config(&dir.join("state"), 0);
    if !agent_args.is_empty() {
        config.launcher = common::wrapped_agent(&dir, "agent.sh", "", agent_args);
    }
    let daemon = Daemon::start(&config);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    (dir, daemon, kiln, sandbox)
}

async fn daemon_with_sandbox(name: &str) -> (std::path::PathBuf, Daemon, Kiln, Sandbox) {
    daemon_with_sandbox_and(name, "").await
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_leaves_the_exec_running_and_attach_gets_the_rest() {
    let (dir, daemon, _kiln, sandbox) = daemon_with_sandbox("proc-leave").await;
    let script = "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.2; done; exit 4";
    let mut exec = sandbox
        .exec(["sh", "-c", script])
        .spawn()
        .await
        .expect("spawn");
    let id = exec.id().to_string();
    let mut last_seq = 0;
    while last_seq == 0 {
        match exec.next().await.expect("event").expect("ok") {
            e @ ExecEvent::Stdout { .. } => last_seq = e.seq(),
            ExecEvent::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    drop(exec); // the HTTP stream closes
    let list = sandbox.processes().await.expect("list");
    assert_eq!(list[0].exec_id, id);
    assert_eq!(list[0].state, ExecState::Running, "it runs on: {list:?}");
    let (out, gaps, last) = drain(sandbox.attach(&id, last_seq).await.expect("attach")).await;
    assert!(gaps.is_empty());
    assert!(out.ends_with("line7\nline8\n"), "{out:?}");
    assert!(
        !out.contains("line1\n"),
        "only what came after seq {last_seq}: {out:?}"
    );
    let ExecEvent::Exited { result, .. } = last else {
        panic!("{last:?}")
    };
    assert_eq!(result.exit_code, Some(4));
    // From the start again: everything.
    let all = output_of(&sandbox, &id).await;
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 8);
    assert_eq!(all.missed_chunks, 0);

    // Asked to die with its client: it does.
    let exec = sandbox
        .exec(["sleep", "30"])
        .kill_on_drop(true)
        .spawn()
        .await
        .expect("spawn");
    let id = exec.id().to_string();
    drop(exec);
    wait_for(&sandbox, &id, "killed on disconnect", |e| {
        e.result.as_ref().and_then(|r| r.signal) == Some(libc::SIGKILL)
    })
    .await;
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn attach_after_eviction_shows_a_gap_then_the_rest() {
    // An agent with the smallest output ring (64 KiB).
    let (dir, daemon, _kiln, sandbox) =
        daemon_with_sandbox_and("proc-gap", "--setting kiln.output_buffer_kib=64").await;
    // ~400 KiB of numbered lines, nobody reading.
    let script = "i=0; while [ $i -lt 4000 ]; do printf '%06d %0100d\\n' $i 0; i=$((i+1)); done";
    let info = sandbox
        .exec(["sh", "-c", script])
        .detach()
        .await
        .expect("detach");
    wait_for(&sandbox, &info.exec_id, "the writer ends", |e| {
        e.state == ExecState::Exited
    })
    .await;
    let listed = sandbox.processes().await.expect("list");
    assert!(listed[0].first_seq > 1, "output was evicted: {listed:?}");
    let (out, gaps, last) = drain(sandbox.attach(&info.exec_id, 0).await.expect("attach")).await;
    assert_eq!(gaps.len(), 1, "one gap, first: {gaps:?}");
    assert_eq!(gaps[0], (1, listed[0].first_seq - 1));
    assert!(
        out.ends_with(&format!("003999 {:0100}\n", 0)),
        "the newest output is kept"
    );
    assert!(!out.starts_with("000000"), "the oldest was evicted");
    assert!(matches!(last, ExecEvent::Exited { .. }), "{last:?}");

    // Over HTTP: the gap is a line of its own.
    let uri = format!(
        "/v1/sandboxes/{}/execs/{}/output?after_seq=0&follow=false",
        sandbox.id(),
        info.exec_id
    );
    let (status, _, body) = http(&daemon.socket, "GET", &uri, &[], vec![]).await;
    assert_eq!(status, 200);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&body)
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(first["type"], "gap", "{first}");
    assert_eq!(first["first_seq"], 1);
    // The library sees the same thing, and output() counts what it missed.
    let out = output_of(&sandbox, &info.exec_id).await;
    assert_eq!(out.missed_chunks, listed[0].first_seq - 1);
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn stdin_writes_are_offset_tagged_and_a_retry_is_not_written_twice() {
    let (dir, daemon, _kiln, sandbox) = daemon_with_sandbox("proc-stdin").await;
    let info = sandbox
        .exec(["cat"])
        .stdin("first ")
        .keep_stdin_open()
        .detach()
        .await
        .expect("detach");
    let control = sandbox.exec_control(&info.exec_id);
    let w = control.write_stdin(6, "second ").await.expect("write");
    assert_eq!((w.accepted, w.open), (13, true));
    // A retry (the answer was lost): acknowledged, not written again.
    let w = control.write_stdin(6, "second ").await.expect("retry");
    assert_eq!(w.accepted, 13);
    // A gap is refused.
    let err = control.write_stdin(100, "x").await.expect_err("gap");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    // Raw HTTP, offset in a header, retried.
    let uri = format!(
        "/v1/sandboxes/{}/execs/{}/stdin",
        sandbox.id(),
        info.exec_id
    );
    for _ in 0..2 {
        let (status, _, body) = http(
            &daemon.socket,
            "POST",
            &uri,
            &[("x-kiln-offset", "13")],
            b"third ".to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["accepted"], 19);
    }
    let (status, _, body) = http(
        &daemon.socket,
        "POST",
        &format!("{uri}?offset=1"),
        &[("x-kiln-offset", "2")],
        vec![],
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_argument")
    );
    // Appending goes after what was accepted; then close.
    let w = control.append_stdin("last\n").await.expect("append");
    assert_eq!(w.accepted, 24);
    let w = control.close_stdin().await.expect("close");
    assert!(!w.open);
    let out = output_of(&sandbox, &info.exec_id).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first second third last\n"
    );
    assert_eq!(out.result.exit_code, Some(0));
    let err = control.append_stdin("late").await.expect_err("closed");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

/// Pids of live processes with `arg` as one of their arguments.
fn pids_with(arg: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
        })
        .collect()
}

#[tokio::test]
async fn a_signal_reaches_the_whole_process_group_and_listings_follow() {
    let (dir, daemon, _kiln, sandbox) = daemon_with_sandbox("proc-signal").await;
    let marker = format!("98{}", std::process::id());
    // The shell survives TERM (a trap) and waits for its children: it
    // ends only if the signal reached them too, through the group.
    let script = format!(
        "trap 'echo trapped' TERM; sleep {marker} & sleep {marker} & wait; wait; echo done"
    );
    let info = sandbox
        .exec(["sh", "-c", &script])
        .detach()
        .await
        .expect("detach");
    let done = sandbox
        .exec(["true"])
        .output()
        .await
        .expect("a second exec");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pids_with(&marker).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleeps never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = sandbox.processes().await.expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].exec_id, done.result.exec_id, "newest first");
    assert_eq!(list[0].state, ExecState::Exited);
    assert_eq!(list[1].state, ExecState::Running);

    sandbox
        .exec_control(&info.exec_id)
        .signal(libc::SIGTERM)
        .await
        .expect("signal");
    wait_for(&sandbox, &info.exec_id, "the shell ends", |e| {
        e.state == ExecState::Exited
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pids_with(&marker).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group's sleeps outlived the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = sandbox
        .output_since(&info.exec_id, 0)
        .await
        .expect("attach")
        .output()
        .await
        .expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "trapped\ndone\n");
    assert_eq!(out.result.exit_code, Some(0));
    // Signals by name over HTTP; bad ones are refused.
    let uri = format!(
        "/v1/sandboxes/{}/execs/{}/signal",
        sandbox.id(),
        info.exec_id
    );
    let post = |body: &'static [u8]| {
        http(
            &daemon.socket,
            "POST",
            &uri,
            &[("content-type", "application/json")],
            body.to_vec(),
        )
    };
    let (s, _, b) = post(br#"{"signal":"NOPE"}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    let (s, _, b) = post(br#"{"signal":99}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    let (s, _, b) = post(br#"{"signal":"TERM"}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (409, "conflict"), "it ended");
    let (s, _, b) = http(
        &daemon.socket,
        "GET",
        &format!("/v1/sandboxes/{}/execs/exec-nope/output", sandbox.id()),
        &[],
        vec![],
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (404, "not_found"));
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_sigkilled_daemon_finds_its_running_exec_again() {
    let (dir, mut daemon, kiln, sandbox) = daemon_with_sandbox("proc-restart").await;
    let script = "echo before; read line; echo got $line; exit 5";
    let info = sandbox
        .exec(["sh", "-c", script])
        .keep_stdin_open()
        .detach()
        .await
        .expect("detach");
    wait_for(&sandbox, &info.exec_id, "its first line", |e| {
        e.last_seq >= 1
    })
    .await;
    drop(kiln);
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let restarted = daemon.respawn();
    std::mem::forget(daemon);
    let kiln = Kiln::connect_unix(&restarted.socket)
        .await
        .expect("reconnect");
    let sandbox = kiln.sandboxes().get(sandbox.id()).await.expect("sandbox");
    let list = sandbox.processes().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].exec_id.as_str(), list[0].state),
        (info.exec_id.as_str(), ExecState::Running)
    );
    assert_eq!(sandbox.cached_info().running_execs, 1, "watched again");
    let control = sandbox.exec_control(&info.exec_id);
    control.append_stdin("after\n").await.expect("stdin");
    let out = output_of(&sandbox, &info.exec_id).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\ngot after\n");
    assert_eq!(out.result.exit_code, Some(5));
    drop(restarted);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the `kiln` CLI against `socket`; returns (exit code, stdout).
fn cli(socket: &Path, args: &[&str], stdin: &[u8]) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kiln");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_detaches_lists_attaches_writes_stdin_and_signals() {
    let (dir, daemon, _kiln, sandbox) = daemon_with_sandbox("proc-cli").await;
    let sock = daemon.socket.clone();
    let id = sandbox.id().to_string();
    let run = move |args: Vec<String>, stdin: &'static [u8]| {
        let sock = sock.clone();
        let run = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&sock, &args, stdin)
        });
        async move {
            tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the CLI finished in time")
        }
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (code, out) = run(
        s(&[
            "exec",
            &id,
            "--detach",
            "--stdin-open",
            "--",
            "sh",
            "-c",
            "cat; exit 3",
        ]),
        b"one\n",
    )
    .await
    .expect("cli");
    assert_eq!(code, 0);
    let exec = out.trim().to_string();
    assert!(exec.starts_with("exec-"), "{out}");
    let (code, out) = run(s(&["stdin", &id, &exec, "--close"]), b"two\n")
        .await
        .expect("cli");
    assert_eq!((code, out.trim()), (0, "8"));
    let (code, out) = run(s(&["attach", &id, &exec]), b"").await.expect("cli");
    assert_eq!((code, out.as_str()), (3, "one\ntwo\n"));
    let (code, out) = run(s(&["attach", &id, &exec, "--after-seq", "1"]), b"")
        .await
        .expect("cli");
    assert_eq!(code, 3);
    assert!(!out.contains("one"), "{out}");
    let (code, out) = run(s(&["ps", &id]), b"").await.expect("cli");
    assert_eq!(code, 0);
    assert!(out.contains(&exec) && out.contains("exited"), "{out}");
    let (_, out) = run(s(&["exec", &id, "--detach", "--", "sleep", "30"]), b"")
        .await
        .expect("cli");
    let sleeper = out.trim().to_string();
    let (code, _) = run(s(&["kill", &id, &sleeper, "--signal", "TERM"]), b"")
        .await
        .expect("cli");
    assert_eq!(code, 0);
    let (code, _) = run(s(&["attach", &id, &sleeper]), b"").await.expect("cli");
    assert_eq!(code, 128 + libc::SIGTERM);
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}
