//! Sandbox tokens and the audit trail through `kiln serve` as a process,
//! with real host agents as VMs: the unix socket for administrators, the
//! TCP listener for token holders, `GET /v1/audit` and `Kiln::audit`
//! reading back what happened.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{error_code, http, http_tcp, Daemon};
use kiln::model::{
    AuditFilter, AuditKind, AuditOutcome, AuditRecord, SandboxSpec, TokenOp, TokenRequest,
};
use kiln::{Error, Kiln};

/// A daemon with a TCP listener; returns it and the listener's address.
fn daemon_with_listener(name: &str, pool: u32) -> (Daemon, SocketAddr, std::path::PathBuf) {
    let dir = common::scratch(name);
    let mut config = common::host_config(&dir.join("state"), pool);
    let addr = common::free_loopback_addr();
    config.server.listen = Some(addr);
    let daemon = Daemon::start(&config);
    wait_tcp(addr);
    (daemon, addr, dir)
}

/// Waits until the TCP listener accepts.
fn wait_tcp(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no TCP listener on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates a sandbox over the socket (as an administrator) with a token.
async fn create_with_token(
    kiln: &Kiln,
    ops: Vec<TokenOp>,
    ttl: Option<u64>,
    subject: &str,
) -> (String, String) {
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            token: Some(TokenRequest {
                ops: ops.clone(),
                ttl_secs: ttl,
                subject: Some(subject.into()),
            }),
            ..SandboxSpec::default()
        })
        .await
        .expect("create with a token");
    let token = sandbox.token().expect("a token was asked for").clone();
    assert_eq!((token.subject.as_str(), token.ops), (subject, ops));
    (sandbox.id().to_string(), token.token)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token request on the TCP listener: (status, body).
async fn with_token(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let (status, _, body) = http_tcp(addr, method, uri, &headers, body.to_vec()).await;
    (status, body)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn of_kind(records: &[AuditRecord], kind: AuditKind) -> Vec<&AuditRecord> {
    records.iter().filter(|r| r.kind == kind).collect()
}

/// Polls the audit trail until `n` records of `kind` are in for `sandbox`.
async fn wait_for_records(kiln: &Kiln, sandbox: &str, kind: AuditKind, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = kiln
            .audit(AuditFilter {
                sandbox: Some(sandbox.into()),
                kind: Some(kind),
                ..AuditFilter::default()
            })
            .await
            .expect("audit")
            .len();
        if got >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} {kind:?} records never came (got {got})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_session_is_audited_once_per_action_with_who_did_it() {
    let (daemon, addr, dir) = daemon_with_listener("tokens-session", 1);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let uid = rustix::process::getuid().as_raw();
    let (id, token) =
        create_with_token(&kiln, vec![TokenOp::Exec, TokenOp::Files], None, "agent-7").await;
    let t = Some(token.as_str());

    // The token holder, over TCP: an exec, a file in, the file out.
    let (status, body) = with_token(
        addr,
        t,
        "POST",
        &format!("/v1/sandboxes/{id}/execs?wait=true"),
        br#"{"argv":["sh","-c","echo hi; exit 3"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let result = json(&body);
    assert_eq!(
        (result["exit_code"].as_i64(), result["stdout"].as_str()),
        (Some(3), Some("hi\n"))
    );
    let (status, _) = with_token(
        addr,
        t,
        "PUT",
        &format!("/v1/sandboxes/{id}/files/dir/a.txt"),
        b"hello",
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = with_token(
        addr,
        t,
        "GET",
        &format!("/v1/sandboxes/{id}/files/dir/a.txt"),
        b"",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, b"hello".as_slice()));
    // A program reading stdin, fed and closed by the holder.
    let (status, body) = with_token(
        addr,
        t,
        "POST",
        &format!("/v1/sandboxes/{id}/execs?detach=true"),
        br#"{"argv":["cat"],"stdin_open":true}"#,
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let cat = json(&body)["exec_id"]
        .as_str()
        .expect("exec id")
        .to_string();
    let (status, body) = with_token(
        addr,
        t,
        "POST",
        &format!("/v1/sandboxes/{id}/execs/{cat}/stdin?offset=0&close=true"),
        b"fed\n",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["accepted"], 4);

    // The administrator, over the socket: a detached exec, a signal.
    let sock = &daemon.socket;
    let (status, _, body) = http(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/execs?detach=true"),
        &[],
        br#"{"argv":["sleep","60"]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 201);
    let exec = json(&body)["exec_id"]
        .as_str()
        .expect("exec id")
        .to_string();
    let (status, _, _) = http(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/execs/{exec}/signal"),
        &[],
        br#"{"signal":"TERM"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 204);
    // Its end is seen by the daemon's watcher.
    wait_for_records(&kiln, &id, AuditKind::ExecEnd, 3).await;
    kiln.sandboxes()
        .get(&id)
        .await
        .expect("get")
        .delete()
        .await
        .expect("delete");

    let records = kiln
        .audit(AuditFilter {
            sandbox: Some(id.clone()),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(records.len(), 12, "one record per action: {kinds:?}");
    let admin = |r: &AuditRecord| r.uid == Some(uid) && r.subject.is_none();
    let holder = |r: &AuditRecord| r.uid.is_none() && r.subject.as_deref() == Some("agent-7");
    let one = |kind| {
        let found = of_kind(&records, kind);
        assert_eq!(found.len(), 1, "{kind:?}: {kinds:?}");
        found[0].clone()
    };
    let create = one(AuditKind::Create);
    assert!(admin(&create), "{create:?}");
    assert!(
        create
            .what
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("token for agent-7 (exec,files)"),
        "{create:?}"
    );
    let write = one(AuditKind::FileWrite);
    assert!(holder(&write), "{write:?}");
    assert_eq!(
        (write.what.path.as_deref(), write.what.bytes),
        (Some("dir/a.txt"), Some(5))
    );
    let read = one(AuditKind::FileRead);
    assert!(holder(&read), "{read:?}");
    assert_eq!(
        (read.what.path.as_deref(), read.what.bytes),
        (Some("dir/a.txt"), Some(5))
    );
    let signal = one(AuditKind::Signal);
    assert!(admin(&signal));
    assert_eq!(
        (signal.what.exec_id.as_deref(), signal.what.signal),
        (Some(exec.as_str()), Some(15))
    );
    let stdin = one(AuditKind::Stdin);
    assert!(holder(&stdin), "{stdin:?}");
    assert_eq!(
        (stdin.what.exec_id.as_deref(), stdin.what.bytes),
        (Some(cat.as_str()), Some(4))
    );
    let delete = one(AuditKind::Delete);
    assert!(admin(&delete));
    assert_eq!(delete.what.detail.as_deref(), Some("deleted"));

    let execs = of_kind(&records, AuditKind::Exec);
    assert_eq!(execs.len(), 3, "{kinds:?}");
    assert!(holder(execs[0]) && holder(execs[1]));
    assert_eq!(execs[1].what.exec_id.as_deref(), Some(cat.as_str()));
    assert_eq!(
        execs[0].what.argv.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "echo hi; exit 3".into()][..])
    );
    assert!(admin(execs[2]));
    assert_eq!(execs[2].what.exec_id.as_deref(), Some(exec.as_str()));
    let ends = of_kind(&records, AuditKind::ExecEnd);
    assert_eq!(ends.len(), 3, "{kinds:?}");
    let cats_end = ends
        .iter()
        .find(|r| r.what.exec_id.as_deref() == Some(cat.as_str()))
        .expect("cat ended");
    assert!(holder(cats_end));
    assert_eq!(cats_end.result.exit_code, Some(0));
    let holders_end = ends
        .iter()
        .find(|r| r.what.exec_id == execs[0].what.exec_id)
        .expect("the holder's exec ended");
    assert!(holder(holders_end));
    assert_eq!(holders_end.what.exec_id, execs[0].what.exec_id);
    assert_eq!(holders_end.result.exit_code, Some(3));
    assert!(holders_end.result.duration_ms.is_some());
    let admins_end = ends
        .iter()
        .find(|r| admin(r))
        .expect("the admin's exec ended");
    assert_eq!(admins_end.what.exec_id.as_deref(), Some(exec.as_str()));
    assert_eq!(admins_end.result.exit_signal, Some(15));
    assert!(
        records.iter().all(|r| r.result.outcome == AuditOutcome::Ok),
        "{records:?}"
    );
    assert!(records
        .windows(2)
        .all(|w| w[0].id < w[1].id && w[0].at_ms <= w[1].at_ms));

    // The same over raw HTTP with a query, as curl sees it.
    let (status, _, body) = http(
        sock,
        "GET",
        &format!("/v1/audit?sandbox={id}&kind=exec"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(3));
    let (status, _, body) = http(sock, "GET", "/v1/audit?kind=nope", &[], vec![]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_argument")
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn tokens_reach_their_sandbox_and_operations_only() {
    let (daemon, addr, dir) = daemon_with_listener("tokens-scope", 2);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let (a, token_a) = create_with_token(&kiln, vec![TokenOp::Exec], None, "holder-a").await;
    let (b, _) = create_with_token(&kiln, vec![TokenOp::Files], None, "holder-b").await;
    let ta = Some(token_a.as_str());
    let exec = br#"{"argv":["echo","ok"]}"#;
    let exec_on = |id: &str| format!("/v1/sandboxes/{id}/execs?wait=true");

    // No token on TCP: 401, health included.
    let (status, body) = with_token(addr, None, "GET", "/v1/health", b"").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    let (status, body) = with_token(addr, None, "POST", &exec_on(&a), exec).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    // A valid token: health, and execs in its own sandbox.
    assert_eq!(with_token(addr, ta, "GET", "/v1/health", b"").await.0, 200);
    let (status, body) = with_token(addr, ta, "POST", &exec_on(&a), exec).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["stdout"], "ok\n");
    let (status, _) = with_token(addr, ta, "GET", &format!("/v1/sandboxes/{a}"), b"").await;
    assert_eq!(status, 200);
    // The library over TCP, as the token holder.
    let holder = Kiln::connect_tcp(addr, &token_a)
        .await
        .expect("connect_tcp");
    let out = holder
        .sandboxes()
        .get(&a)
        .await
        .expect("its sandbox")
        .exec(["echo", "lib"])
        .output()
        .await
        .expect("exec through the library");
    assert_eq!(out.stdout, b"lib\n");
    let listed = holder.sandboxes().list(Default::default()).await;
    assert!(
        matches!(listed, Err(Error::PermissionDenied(_))),
        "{listed:?}"
    );
    let stranger = Kiln::connect_tcp(addr, "kt1.not.valid").await;
    assert!(
        matches!(stranger, Err(Error::Unauthenticated(_))),
        "{stranger:?}"
    );
    // Another sandbox, an operation it does not allow, an admin's route:
    // 403.
    let (status, body) = with_token(addr, ta, "POST", &exec_on(&b), exec).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "permission_denied")
    );
    let (status, body) =
        with_token(addr, ta, "PUT", &format!("/v1/sandboxes/{a}/files/x"), b"x").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "permission_denied")
    );
    for (method, uri) in [
        ("GET", "/v1/sandboxes".to_string()),
        ("DELETE", format!("/v1/sandboxes/{a}")),
        ("GET", "/v1/audit".to_string()),
    ] {
        let (status, body) = with_token(addr, ta, method, &uri, b"").await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "permission_denied"),
            "{method} {uri}"
        );
    }
    // A tampered signature: 401.
    let (signed, tag) = token_a.rsplit_once('.').expect("token parts");
    let flipped = if tag.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{signed}.{flipped}{}", &tag[1..]);
    let (status, body) = with_token(addr, Some(&tampered), "POST", &exec_on(&a), exec).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    assert!(String::from_utf8_lossy(&body).contains("signature"));
    // An expired one: 401.
    let (c, token_c) = create_with_token(&kiln, vec![TokenOp::Exec], Some(1), "holder-c").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = with_token(addr, Some(&token_c), "POST", &exec_on(&c), exec).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    // After its sandbox is deleted: 401, though it verifies and has time left.
    kiln.sandboxes()
        .get(&a)
        .await
        .expect("a")
        .delete()
        .await
        .expect("delete a");
    let (status, body) = with_token(addr, ta, "POST", &exec_on(&a), exec).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthenticated")
    );
    assert!(String::from_utf8_lossy(&body).contains("ended"));

    // Every refusal is in the audit trail, with the sandbox and, when the
    // token was valid, its holder.
    let denied = kiln
        .audit(AuditFilter {
            kind: Some(AuditKind::TokenDenied),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(denied.len(), 12, "{denied:#?}");
    assert!(denied
        .iter()
        .all(|r| r.result.outcome == AuditOutcome::Denied && r.uid.is_none()));
    let other_sandbox = denied
        .iter()
        .find(|r| r.sandbox_id.as_deref() == Some(b.as_str()))
        .expect("the refusal on b");
    assert_eq!(other_sandbox.subject.as_deref(), Some("holder-a"));
    assert!(other_sandbox
        .result
        .reason
        .as_deref()
        .unwrap_or("")
        .starts_with("permission_denied"));
    let no_token = &denied[0];
    assert_eq!(
        (no_token.subject.as_deref(), no_token.sandbox_id.as_deref()),
        (None, None)
    );
    assert!(no_token
        .what
        .detail
        .as_deref()
        .unwrap_or("")
        .starts_with("GET /v1/health from 127.0.0.1:"));
    let after_delete = denied.last().expect("the last refusal");
    assert_eq!(after_delete.sandbox_id.as_deref(), Some(a.as_str()));
    assert!(after_delete
        .result
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("has ended"));
    // Nothing the refused requests asked for happened.
    let execs = kiln
        .audit(AuditFilter {
            kind: Some(AuditKind::Exec),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(execs.len(), 2, "only the allowed execs ran: {execs:#?}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_key_is_owner_only_and_tokens_outlive_a_daemon_restart() {
    use std::os::unix::fs::PermissionsExt;
    let (mut daemon, addr, dir) = daemon_with_listener("tokens-restart", 1);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let (id, token) = create_with_token(&kiln, vec![TokenOp::Exec], None, "survivor").await;
    let key_path = daemon.state_dir.join("token.key");
    let meta = std::fs::metadata(&key_path).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    for db in ["kiln.db", "audit.db"] {
        let meta = std::fs::metadata(daemon.state_dir.join(db)).expect(db);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{db}");
    }
    let key = std::fs::read(&key_path).expect("key");
    let exec = br#"{"argv":["echo","still"]}"#;
    let uri = format!("/v1/sandboxes/{id}/execs?wait=true");
    assert_eq!(
        with_token(addr, Some(&token), "POST", &uri, exec).await.0,
        200
    );

    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let restarted = daemon.respawn();
    wait_tcp(addr);
    assert_eq!(std::fs::read(&key_path).expect("key"), key, "the same key");
    let (status, body) = with_token(addr, Some(&token), "POST", &uri, exec).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["stdout"], "still\n");
    std::mem::forget(daemon);
    drop(restarted);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_non_loopback_listener_is_refused_unless_allowed() {
    let dir = common::scratch("tokens-any");
    let mut config = common::host_config(&dir.join("state"), 0);
    config.server.listen = Some("0.0.0.0:1".parse().expect("addr"));
    let config_path = dir.join("any.toml");
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .expect("kiln serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--listen-any"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_audit_trail_keeps_its_newest_records_within_the_bound() {
    let dir = common::scratch("audit-retention");
    let mut config = common::host_config(&dir.join("state"), 0);
    config.audit.max_rows = 3;
    config.audit.prune_interval_secs = 1;
    let kiln = Kiln::embedded(config).await.expect("embedded");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            token: Some(TokenRequest {
                ops: vec![TokenOp::Files],
                ..TokenRequest::default()
            }),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(
        sandbox.token().map(|t| t.subject.clone()),
        Some(format!("uid:{uid}"))
    );
    for i in 0..4 {
        let out = sandbox
            .exec(["sh", "-c", &format!("exit {i}")])
            .output()
            .await
            .expect("exec");
        assert_eq!(out.result.exit_code, Some(i));
    }
    // create + 4 execs + 4 ends, unless a prune already ran.
    let newest = kiln
        .audit(AuditFilter {
            limit: Some(1),
            ..AuditFilter::default()
        })
        .await
        .expect("audit")[0]
        .clone();
    assert_eq!(
        (newest.kind, newest.result.exit_code),
        (AuditKind::ExecEnd, Some(3))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let all = kiln.audit(AuditFilter::default()).await.expect("audit");
        if all.len() <= 3 {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never pruned: {} records",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<u64> = kept.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [newest.id - 2, newest.id - 1, newest.id],
        "the newest three stay"
    );
    kiln.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
