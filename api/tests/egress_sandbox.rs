//! Egress through the embedded core, with real host agents as VMs: the
//! allowlist on create and on templates (precedence, validation), the
//! proxy attached at claim on `<agent socket>_1080`, the proxy variables
//! of execs, egress records in the audit trail, and no socket at all for a
//! sandbox without an allowlist.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::config::Config;
use kiln::model::{AuditFilter, AuditKind, AuditOutcome, EgressSpec, SandboxSpec};
use kiln::Kiln;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const BODY: &str = "through the sandbox's proxy";

/// A loopback HTTP server answering [`BODY`].
async fn http_server() -> u16 {
    common::http_server(|_| BODY.to_string()).await.0
}

fn spec(allow: &[&str]) -> EgressSpec {
    EgressSpec {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        cidrs: Vec::new(),
    }
}

/// A host-agent config whose proxies may reach this host's loopback (the
/// test-only allowance) and a template `netted` with a default allowlist.
fn config(dir: &Path) -> Config {
    let mut c = common::host_config(dir, 1);
    c.egress.allow_private = vec![
        "127.0.0.0/8".parse().expect("net"),
        "::1/128".parse().expect("net"),
    ];
    let mut netted = c.templates["host"].clone();
    netted.pool_target = 0;
    netted.egress = Some(spec(&["localhost", "*.example.com"]));
    c.templates.insert("netted".into(), netted);
    c
}

/// Every egress socket under the state dir's VM run directories.
fn egress_sockets(state: &Path) -> Vec<PathBuf> {
    let Ok(vms) = std::fs::read_dir(state.join("vms")) else {
        return Vec::new();
    };
    vms.flatten()
        .map(|d| d.path().join("agent.sock_1080"))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn an_allowlisted_sandbox_gets_a_proxy_its_env_and_audit_records() {
    let dir = common::scratch("egress-sandbox");
    let kiln = Kiln::embedded(config(&dir)).await.expect("kiln");
    let port = http_server().await;
    let plain = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("a sandbox without egress");
    assert_eq!(plain.cached_info().egress, None);
    assert!(egress_sockets(&dir).is_empty(), "no allowlist, no proxy");
    let out = plain
        .exec(["sh", "-c", "echo \"[$HTTPS_PROXY]\""])
        .output()
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");

    let sandbox = create_allowing_localhost(&kiln).await;
    let id = sandbox.cached_info().id.clone();
    assert_eq!(sandbox.cached_info().egress, Some(spec(&["localhost"])));
    let out = sandbox
        .exec(["sh", "-c", "echo $HTTP_PROXY $https_proxy $NO_PROXY"])
        .output()
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.1\n"
    );

    // Where kiln-vmm would hand the guest forwarder's connections.
    let sockets = egress_sockets(&dir);
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    for target in ["localhost", "pypi.org"] {
        let answer = ask(&sockets[0], &format!("{target}:{port}")).await;
        if target == "localhost" {
            assert!(answer.ends_with(BODY), "{answer}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        }
    }

    let mut records = Vec::new();
    for _ in 0..100 {
        records = kiln
            .audit(AuditFilter {
                sandbox: Some(id.clone()),
                kind: Some(AuditKind::Egress),
                ..AuditFilter::default()
            })
            .await
            .expect("audit");
        if records.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records.len(), 2, "{records:?}");
    let ok = records
        .iter()
        .find(|r| r.result.outcome == AuditOutcome::Ok)
        .expect("the allowed one");
    let detail = ok.what.detail.as_deref().expect("detail");
    assert!(
        detail.starts_with(&format!("localhost:{port} via ")),
        "{detail}"
    );
    assert!(ok.what.bytes.expect("bytes") > BODY.len() as u64);
    let denied = records
        .iter()
        .find(|r| r.result.outcome == AuditOutcome::Denied)
        .expect("the denied one");
    assert_eq!(denied.what.detail, Some(format!("pypi.org:{port}")));
    assert!(denied
        .result
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("not on the sandbox's egress allowlist")));

    sandbox.delete().await.expect("delete");
    assert!(
        egress_sockets(&dir).is_empty(),
        "the proxy goes with the sandbox"
    );
}

#[tokio::test]
async fn templates_give_the_default_and_creates_may_only_narrow_it() {
    let dir = common::scratch("egress-precedence");
    let kiln = Kiln::embedded(config(&dir)).await.expect("kiln");
    let create = |template: &str, egress: Option<EgressSpec>| SandboxSpec {
        template: Some(template.into()),
        egress,
        ..SandboxSpec::default()
    };
    let inherited = kiln
        .sandboxes()
        .create(create("netted", None))
        .await
        .expect("the template's allowlist");
    assert_eq!(
        inherited.cached_info().egress,
        Some(spec(&["localhost", "*.example.com"]))
    );
    let narrowed = kiln
        .sandboxes()
        .create(create("netted", Some(spec(&["api.example.com"]))))
        .await
        .expect("narrowed");
    assert_eq!(
        narrowed.cached_info().egress,
        Some(spec(&["api.example.com"]))
    );
    let off = kiln
        .sandboxes()
        .create(create("netted", Some(EgressSpec::default())))
        .await
        .expect("egress turned off");
    assert_eq!(off.cached_info().egress, None);

    for (template, allow, needle) in [
        (
            "netted",
            vec!["pypi.org"],
            "not within the template's allowlist",
        ),
        ("netted", vec!["*.com"], "invalid egress name"),
        ("host", vec!["10.0.0.1"], "invalid egress name"),
        ("host", vec!["bad name.com"], "invalid egress name"),
    ] {
        let err = kiln
            .sandboxes()
            .create(create(template, Some(spec(&allow))))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), "invalid_argument", "{err}");
        assert!(err.to_string().contains(needle), "{allow:?}: {err}");
    }
    let err = kiln
        .sandboxes()
        .create(create(
            "host",
            Some(EgressSpec {
                allow: Vec::new(),
                cidrs: vec!["10.0.0.0/99".into()],
            }),
        ))
        .await
        .expect_err("bad CIDR");
    assert_eq!(err.code(), "invalid_argument", "{err}");
}

/// A sandbox that may reach `localhost`.
async fn create_allowing_localhost(kiln: &Kiln) -> kiln::Sandbox {
    kiln.sandboxes()
        .create(SandboxSpec {
            egress: Some(spec(&["localhost"])),
            ..SandboxSpec::default()
        })
        .await
        .expect("create with egress")
}

/// Sends a plain HTTP proxy request for `target` on the egress socket;
/// returns the whole answer.
async fn ask(socket: &Path, target: &str) -> String {
    let mut s = UnixStream::connect(socket).await.expect("connect");
    let req = format!("GET http://{target}/ HTTP/1.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test]
async fn a_restarted_daemon_gives_a_readopted_sandbox_its_proxy_back() {
    let dir = common::scratch("egress-restart");
    let state = dir.join("state");
    let mut c = config(&state);
    c.templates.remove("netted");
    let daemon = common::Daemon::start(&c);
    let port = http_server().await;
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let sandbox = create_allowing_localhost(&kiln).await;
    let sockets = egress_sockets(&state);
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    let target = format!("localhost:{port}");
    assert!(ask(&sockets[0], &target).await.ends_with(BODY));

    let mut daemon = daemon;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let restarted = daemon.respawn();
    assert_eq!(
        egress_sockets(&state),
        sockets,
        "the same socket, listening again"
    );
    let answer = ask(&sockets[0], &target).await;
    assert!(answer.ends_with(BODY), "{answer}");
    let answer = ask(&sockets[0], &format!("pypi.org:{port}")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    let kiln = Kiln::connect_unix(&restarted.socket)
        .await
        .expect("reconnect");
    kiln.sandboxes()
        .get(sandbox.id())
        .await
        .expect("re-adopted")
        .delete()
        .await
        .expect("delete");
    assert!(egress_sockets(&state).is_empty());
    std::mem::forget(daemon);
}
