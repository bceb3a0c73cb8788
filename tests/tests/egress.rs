//! Egress with real microVMs under `kiln serve`: a sandbox with an
//! allowlist reaches a loopback server on the testbed through the guest
//! agent's forwarder, vsock, the jailed kiln-vmm and the daemon's proxy
//! (plain HTTP with wget, a CONNECT tunnel with nc); a name off the list
//! gets 403; a sandbox without an allowlist has no interface but lo and no
//! way out. The testbed resolves no name (not even localhost), so the
//! allowed target is the IP literal 127.0.0.1 through a CIDR; names
//! resolving to loopback are covered by the host tests (api/tests).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use kiln::model::{AuditFilter, AuditKind, AuditOutcome, EgressSpec, SandboxSpec};
use kiln::{Kiln, Sandbox};
use kiln_e2e::daemon::{scratch, Daemon};

/// The test server's answer.
const BODY: &str = "egress-ok-7f3a";

/// Loopback only (the test-only allowance), one pooled minimal VM.
const CONFIG: &str = r#"
default_template = "minimal"
[templates.minimal]
base = "minimal"
mem_mib = 256
pool_target = 1
[egress]
allow_private = ["127.0.0.0/8", "::1/128"]
"#;

/// A loopback HTTP server on the testbed answering [`BODY`] to every
/// request, in threads; returns its port.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = s.write_all(reply.as_bytes());
            });
        }
    });
    port
}

/// Runs a shell script in the sandbox; returns (exit code, stdout+stderr,
/// the whole result for messages). The sandbox's `NO_PROXY` rightly
/// exempts 127.0.0.1, the test server's address, so the scripts clear it.
async fn sh(sandbox: &Sandbox, script: &str) -> (Option<i32>, String) {
    let out = sandbox
        .exec(["sh", "-c", script])
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .output()
        .await
        .expect("exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!("{text}\n(result: {:?})", out.result);
    (out.result.exit_code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlisted_sandbox_reaches_its_names_and_nothing_else() {
    let port = http_server();
    let dir = scratch("egress");
    let daemon = Daemon::start(&dir, CONFIG);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");

    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            egress: Some(EgressSpec {
                allow: vec!["pypi.org".into()],
                cidrs: vec!["127.0.0.1/32".into()],
            }),
            ..SandboxSpec::default()
        })
        .await
        .expect("create with egress");
    let id = sandbox.id().to_string();

    // Plain HTTP through HTTP_PROXY (wget sends the absolute URI).
    let (code, text) = sh(
        &sandbox,
        &format!("echo $http_proxy; wget -O - http://127.0.0.1:{port}/hello"),
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with(&format!("http://127.0.0.1:3128\n{BODY}")),
        "{text}"
    );

    // An HTTPS-style tunnel: CONNECT, then the bytes pass through as they are.
    let (code, text) = sh(
        &sandbox,
        &format!(
            "printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' \
             | nc 127.0.0.1 3128"
        ),
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
        "{text}"
    );
    assert!(text.contains(&format!("{BODY}\n(result")), "{text}");

    // A name off the list: the proxy's 403.
    let (code, text) = sh(&sandbox, "wget -S -O - http://example.com/ 2>&1").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("403 Forbidden"), "{text}");

    let mut records = Vec::new();
    for _ in 0..50 {
        records = kiln
            .audit(AuditFilter {
                sandbox: Some(id.clone()),
                kind: Some(AuditKind::Egress),
                ..AuditFilter::default()
            })
            .await
            .expect("audit");
        if records.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes: Vec<AuditOutcome> = records.iter().map(|r| r.result.outcome).collect();
    assert_eq!(
        outcomes,
        [AuditOutcome::Ok, AuditOutcome::Ok, AuditOutcome::Denied],
        "{records:?}"
    );
    sandbox.delete().await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_without_an_allowlist_has_no_way_out() {
    let port = http_server();
    let dir = scratch("no-egress");
    let daemon = Daemon::start(&dir, CONFIG);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    let (code, text) = sh(&sandbox, "ls /sys/class/net; echo \"[$HTTP_PROXY]\"").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("lo\n[]\n\n(result"), "{text}");
    // The forwarder is there, but nothing answers behind it.
    let (code, text) = sh(
        &sandbox,
        &format!("http_proxy=http://127.0.0.1:3128 wget -O - http://127.0.0.1:{port}/"),
    )
    .await;
    assert_eq!(code, Some(1), "a failure, not a crash: {text}");
    assert!(!text.contains(BODY), "{text}");
    // Nor does the testbed's loopback answer the guest's own.
    let (code, text) = sh(&sandbox, &format!("wget -O - http://127.0.0.1:{port}/")).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    sandbox.delete().await.expect("delete");
}
