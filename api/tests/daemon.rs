//! `kiln serve` as a process, with real host agents as VMs: the library
//! over the unix socket, raw HTTP (bad input, NDJSON, headers, metrics),
//! idempotency, VM death, daemon SIGKILL and restart, drain, one daemon
//! per state dir.

mod common;

use std::time::Duration;

use common::{error_code, http, Daemon};
use kiln::model::{EventKind, SandboxSpec};
use kiln::{EndReason, Error, Kiln};

async fn wait_ready(kiln: &Kiln, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kiln.pool("host").await.expect("pool").ready < n {
        assert!(tokio::time::Instant::now() < deadline, "pool never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn library_over_the_socket_and_raw_http() {
    let dir = common::scratch("daemon-http");
    let daemon = Daemon::start(&common::host_config(&dir.join("state"), 1));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    wait_ready(&kiln, 1).await;
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            env: [("A".into(), "1".into())].into(),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    let id = sandbox.id().to_string();
    let out = sandbox
        .exec(["sh", "-c", "echo $A; cat"])
        .stdin("piped\n")
        .output()
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\npiped\n");
    let files = sandbox.files();
    files
        .write("dir/x.txt", std::io::Cursor::new(b"hello".to_vec()))
        .await
        .expect("write");
    assert_eq!(
        files
            .read("dir/x.txt")
            .await
            .expect("read")
            .to_vec()
            .await
            .expect("bytes"),
        b"hello"
    );
    let sock = &daemon.socket;

    // NDJSON exec stream, as curl -N sees it.
    let (status, headers, body) = http(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/execs"),
        &[("content-type", "application/json")],
        br#"{"argv":["sh","-c","echo out; echo err >&2; exit 7"]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.first().expect("started")["type"], "started");
    assert!(lines
        .iter()
        .any(|l| l["type"] == "stdout" && l["data"] == "out\n"));
    assert!(lines
        .iter()
        .any(|l| l["type"] == "stderr" && l["data"] == "err\n"));
    let last = lines.last().expect("exited");
    assert_eq!(
        (last["type"].as_str(), last["exit_code"].as_i64()),
        (Some("exited"), Some(7))
    );
    assert_eq!(last["timed_out"], false);

    // ?wait=true: one JSON result.
    let (status, _, body) = http(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/execs?wait=true"),
        &[("content-type", "application/json")],
        br#"{"argv":["sleep","5"],"timeout_ms":300}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let r: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(r["timed_out"], true, "{r}");

    // Raw file bodies with the SHA-256 in a header.
    let (status, headers, body) = http(
        sock,
        "PUT",
        &format!("/v1/sandboxes/{id}/files/raw/a%20b.bin"),
        &[("x-kiln-mode", "600")],
        vec![1, 2, 3],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let sha = headers["x-kiln-sha256"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(sha.len(), 64);
    let (status, headers, body) = http(
        sock,
        "GET",
        &format!("/v1/sandboxes/{id}/files/raw/a%20b.bin"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, body), (200, vec![1, 2, 3]));
    assert_eq!(headers["x-kiln-sha256"].to_str().expect("ascii"), sha);
    let (status, headers, body) = http(
        sock,
        "HEAD",
        &format!("/v1/sandboxes/{id}/files/raw/a%20b.bin"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["x-kiln-size"], "3");
    // A body that does not match the announced SHA-256 is not written.
    let (status, _, body) = http(
        sock,
        "PUT",
        &format!("/v1/sandboxes/{id}/files/bad.bin"),
        &[("x-kiln-sha256", &sha)],
        vec![9, 9],
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_argument")
    );
    let err = files.stat("bad.bin").await.expect_err("nothing written");
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // Bad input.
    let post = |uri: &'static str, body: &'static [u8]| {
        http(
            sock,
            "POST",
            uri,
            &[("content-type", "application/json")],
            body.to_vec(),
        )
    };
    let (s, _, b) = post("/v1/sandboxes", b"{not json").await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    let (s, _, b) = post("/v1/sandboxes", br#"{"ttl_secs":5,"bogus":1}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    assert!(String::from_utf8_lossy(&b).contains("bogus"));
    let (s, _, b) = post("/v1/sandboxes", br#"{"template":"nope"}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (404, "not_found"));
    let (s, _, b) = post("/v1/sandboxes", br#"{"ttl_secs":99999999}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["error"]["details"]["max"], 86_400, "{v}");
    let (s, _, b) = http(
        sock,
        "GET",
        &format!("/v1/sandboxes/{id}/files/..%2F..%2Fetc%2Fpasswd"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (400, "invalid_argument"));
    let (s, _, b) = http(sock, "GET", "/v1/sandboxes/sbx-nope", &[], vec![]).await;
    assert_eq!((s, error_code(&b).as_str()), (404, "not_found"));
    let big = vec![b' '; 17 << 20];
    let (s, _, b) = http(
        sock,
        "POST",
        "/v1/sandboxes",
        &[("content-type", "application/json")],
        big,
    )
    .await;
    assert_eq!((s, error_code(&b).as_str()), (413, "too_large"));

    // Metrics and the document.
    let (s, _, b) = http(sock, "GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(s, 200);
    assert!(
        text.contains("kiln_pool_claims_total{template=\"host\",launch_type=\"warm\"} 1"),
        "{text}"
    );
    assert!(text.contains("kiln_host_committed_memory_bytes"), "{text}");
    // Every pooled VM ran its warm-up exec in the (host) agent first.
    assert!(
        text.contains("kiln_pool_warm_ups_total{template=\"host\",result=\"ran\"}"),
        "{text}"
    );
    let (s, _, b) = http(sock, "GET", "/openapi.json", &[], vec![]).await;
    assert_eq!(s, 200);
    assert_eq!(String::from_utf8_lossy(&b), kiln::server::openapi_json());

    // Deleted: 410 with the reason, for every route.
    sandbox.delete().await.expect("delete");
    let (s, _, b) = http(sock, "GET", &format!("/v1/sandboxes/{id}"), &[], vec![]).await;
    assert_eq!((s, error_code(&b).as_str()), (410, "sandbox_expired"));
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["error"]["details"]["reason"], "deleted");
    let (s, _, _) = http(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/execs"),
        &[("content-type", "application/json")],
        br#"{"argv":["true"]}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 410);
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn idempotency_keys_replay_and_refuse_other_bodies() {
    let dir = common::scratch("daemon-idem");
    let daemon = Daemon::start(&common::host_config(&dir.join("state"), 1));
    let sock = &daemon.socket;
    let create = |body: &'static [u8]| {
        http(
            sock,
            "POST",
            "/v1/sandboxes",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "k1"),
            ],
            body.to_vec(),
        )
    };
    let (s1, _, b1) = create(br#"{"labels":{"a":"b"}}"#).await;
    assert_eq!(s1, 201, "{}", String::from_utf8_lossy(&b1));
    let (s2, _, b2) = create(br#"{"labels":{"a":"b"}}"#).await;
    assert_eq!(s2, 200);
    let id = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json")["id"].clone();
    assert_eq!(id(&b1), id(&b2), "a replay returns the original sandbox");
    let (s3, _, b3) = create(br#"{"labels":{"a":"c"}}"#).await;
    assert_eq!((s3, error_code(&b3).as_str()), (409, "conflict"));

    let sid = id(&b1).as_str().expect("id").to_string();
    let exec = |body: &'static [u8]| {
        let uri = format!("/v1/sandboxes/{sid}/execs?wait=true");
        async move {
            http(
                sock,
                "POST",
                &uri,
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "e1"),
                ],
                body.to_vec(),
            )
            .await
        }
    };
    let (s, _, b) = exec(br#"{"argv":["sh","-c","echo $$"]}"#).await;
    assert_eq!(s, 200);
    let first: serde_json::Value = serde_json::from_slice(&b).expect("json");
    let (s, _, b) = exec(br#"{"argv":["sh","-c","echo $$"]}"#).await;
    assert_eq!(s, 200);
    let replay: serde_json::Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(first["exec_id"], replay["exec_id"], "not run twice");
    let (s, _, b) = exec(br#"{"argv":["true"]}"#).await;
    assert_eq!((s, error_code(&b).as_str()), (409, "conflict"));
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_killed_vm_ends_its_sandbox_and_frees_its_capacity() {
    let dir = common::scratch("daemon-vmdied");
    let state = dir.join("state");
    let mut config = common::host_config(&state, 0);
    config.limits.max_vms = 1;
    let daemon = Daemon::start(&config);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let mut events = kiln.events(0).await.expect("events");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    let err = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect_err("max_vms = 1");
    assert!(matches!(err, Error::HostCapacity { .. }), "{err}");
    let agents = common::pids_under(&state.to_string_lossy());
    assert_eq!(agents.len(), 1, "one VM process: {agents:?}");
    // SAFETY: kill(2) on the agent this test's daemon started.
    unsafe {
        libc::kill(agents[0], libc::SIGKILL);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        match kiln.sandboxes().get(sandbox.id()).await {
            Err(Error::SandboxExpired { reason, .. }) => break reason,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM death not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reason, EndReason::VmDied);
    assert_eq!(kiln.info().await.expect("info").vms, 0, "capacity released");
    kiln.sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("room for a new VM");
    use futures_util::StreamExt;
    let mut kinds = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        kinds.push(e.expect("event").kind);
    }
    assert!(kinds.contains(&EventKind::Expired), "{kinds:?}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigkilled_daemon_restarts_with_its_sandboxes_and_one_daemon_per_state_dir() {
    let dir = common::scratch("daemon-restart");
    let state = dir.join("state");
    let mut daemon = Daemon::start(&common::host_config(&state, 1));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    wait_ready(&kiln, 1).await;
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    sandbox
        .files()
        .write("keep.txt", std::io::Cursor::new(b"kept".to_vec()))
        .await
        .expect("write");
    wait_ready(&kiln, 1).await;

    // A second daemon on the same state dir refuses to start.
    let mut second = Daemon::spawn(&daemon.config_path);
    let status = second.wait().expect("second exits");
    let mut err = String::new();
    if let Some(mut e) = second.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success());
    assert!(
        err.contains("in use") || err.contains("another kiln daemon"),
        "{err}"
    );

    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let agents = common::pids_under(&state.to_string_lossy());
    assert_eq!(agents.len(), 2, "VMs outlive the daemon: {agents:?}");
    let restarted = daemon.respawn();
    let kiln = Kiln::connect_unix(&restarted.socket)
        .await
        .expect("reconnect");
    let again = kiln
        .sandboxes()
        .get(sandbox.id())
        .await
        .expect("still there");
    let out = again
        .exec(["cat", "keep.txt"])
        .output()
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"kept");
    assert_eq!(
        kiln.pool("host").await.expect("pool").ready,
        1,
        "pooled VM re-adopted"
    );
    assert_eq!(
        common::pids_under(&state.to_string_lossy()),
        agents,
        "the same VM processes, no new ones, no orphans"
    );

    // SIGTERM drains: VMs stop, the daemon exits 0.
    restarted.signal(libc::SIGTERM);
    let mut restarted = restarted;
    let (status, _) = restarted.wait_exit();
    assert!(status.success());
    assert!(common::pids_under(&state.to_string_lossy()).is_empty());
    std::mem::forget(daemon);
    drop(restarted);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_client_that_leaves_mid_boot_leaves_nothing_half_done() {
    let dir = common::scratch("daemon-leave");
    let mut config = common::host_config(&dir.join("state"), 0);
    config.launcher = common::wrapped_agent(&dir, "slow-agent.sh", "sleep 1", "");
    let daemon = Daemon::start(&config);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    // Gives up while the VM boots (the HTTP request is dropped).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        kiln.sandboxes().create(SandboxSpec::default()),
    )
    .await;
    assert!(gave_up.is_err(), "the boot takes a second");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live = kiln
        .sandboxes()
        .list(Default::default())
        .await
        .expect("list");
    assert_eq!(live.len(), 1, "the create finished without its caller");
    let info = kiln.info().await.expect("info");
    assert_eq!(info.vms, 1, "one VM, counted once: {info:?}");
    assert_eq!(kiln.pool("host").await.expect("pool").booting, 0);
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}
