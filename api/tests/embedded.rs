//! The embedded core with real host agents as VMs: pool hits, late-bound
//! env/cwd/files, exec, files, delete and tombstones, limits.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use kiln::model::{ExecEvent, LaunchType, OnEmpty, SandboxFilter, SandboxSpec};
use kiln::{EndReason, Error, Kiln};

async fn wait_pool_ready(kiln: &Kiln, template: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = kiln.pool(template).await.expect("pool");
        if p.ready >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool never reached {n} ready: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn warm_create_with_env_exec_files_and_delete() {
    let dir = common::scratch("embedded-basic");
    let kiln = Kiln::embedded(common::host_config(&dir, 2))
        .await
        .expect("embedded kiln");
    wait_pool_ready(&kiln, "host", 2).await;
    // The ready VMs' host memory, read from /proc.
    let memory = kiln.pool("host").await.expect("pool").memory;
    let memory = memory.expect("pool memory");
    assert_eq!(memory.vms, 2, "{memory:?}");
    assert!(
        memory.rss_bytes > 0 && memory.private_bytes > 0 && memory.pss_bytes <= memory.rss_bytes,
        "{memory:?}"
    );

    let spec = SandboxSpec {
        labels: [("team".into(), "a".into())].into(),
        env: [("GREETING".into(), "hello".into())].into(),
        files: vec![kiln::model::InlineFile {
            path: "in/data.txt".into(),
            content: Some("from create\n".into()),
            content_b64: None,
            mode: None,
        }],
        ..SandboxSpec::default()
    };
    let sandbox = kiln.sandboxes().create(spec).await.expect("create");
    assert_eq!(
        sandbox.cached_info().launch_type,
        LaunchType::Warm,
        "env and files are late-bound: still a pool hit"
    );

    let out = sandbox
        .exec([
            "sh",
            "-c",
            "echo $GREETING $EXTRA; cat in/data.txt; echo err >&2; exit 3",
        ])
        .env("EXTRA", "world")
        .output()
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello world\nfrom create\n"
    );
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.result.exit_code, Some(3));

    // Streamed events: started first, exited last.
    let mut exec = sandbox
        .exec(["sh", "-c", "printf 'a\\377b'"])
        .spawn()
        .await
        .expect("spawn");
    let mut kinds = Vec::new();
    while let Some(e) = exec.next().await {
        let e = e.expect("event");
        if let ExecEvent::Stdout { data, data_b64, .. } = &e {
            assert_eq!(data, &None, "not UTF-8: base64");
            assert_eq!(ExecEvent::bytes(data, data_b64), b"a\xffb");
        }
        kinds.push(std::mem::discriminant(&e));
    }
    assert_eq!(kinds.len(), 3);

    let files = sandbox.files();
    let written = files
        .write("out/blob.bin", std::io::Cursor::new(vec![7u8; 200_000]))
        .await
        .expect("write");
    assert_eq!(written.size, 200_000);
    let back = files
        .read("out/blob.bin")
        .await
        .expect("read")
        .to_vec()
        .await
        .expect("bytes");
    assert_eq!(back, vec![7u8; 200_000]);
    let names: Vec<_> = files
        .list("out")
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["blob.bin"]);
    let err = files.read("../../etc/passwd").await.expect_err("escape");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = files.read("nope").await.expect_err("missing");
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    let listed = kiln
        .sandboxes()
        .list(SandboxFilter {
            labels: [("team".into(), "a".into())].into(),
            state: None,
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);

    let id = sandbox.id().to_string();
    let tomb = sandbox.delete().await.expect("delete");
    assert_eq!(tomb.end_reason, Some(EndReason::Deleted));
    let err = kiln.sandboxes().get(&id).await.expect_err("gone");
    assert!(
        matches!(
            err,
            Error::SandboxExpired {
                reason: EndReason::Deleted,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.http_status(), 410);
    kiln.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn empty_pool_cold_boots_fails_or_waits_and_limits_say_which() {
    let dir = common::scratch("embedded-empty");
    let mut config = common::host_config(&dir, 0);
    config.limits.max_vms = 2;
    let kiln = Kiln::embedded(config).await.expect("embedded kiln");
    let fail = SandboxSpec {
        on_empty: OnEmpty::Fail,
        ..SandboxSpec::default()
    };
    let err = kiln.sandboxes().create(fail).await.expect_err("no pool");
    assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
    assert!(err.is_retryable());
    let wait = SandboxSpec {
        on_empty: OnEmpty::Wait,
        wait_ms: Some(100),
        ..SandboxSpec::default()
    };
    let err = kiln.sandboxes().create(wait).await.expect_err("waited");
    assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");

    let a = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("cold");
    assert_eq!(a.cached_info().launch_type, LaunchType::Cold);
    let _b = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("cold");
    let err = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect_err("over max_vms");
    assert!(
        matches!(&err, Error::HostCapacity { limit, max: 2, .. } if limit == "max_vms"),
        "{err}"
    );
    assert_eq!(err.http_status(), 429);
    // Released at delete.
    a.delete().await.expect("delete");
    kiln.sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("room again");
    assert_eq!(kiln.info().await.expect("info").vms, 2);

    let err = kiln
        .sandboxes()
        .create(SandboxSpec {
            ttl_secs: Some(0),
            ..SandboxSpec::default()
        })
        .await
        .expect_err("ttl 0");
    assert!(err.to_string().contains("between 1 and"), "{err}");
    let err = kiln
        .sandboxes()
        .create(SandboxSpec {
            template: Some("nope".into()),
            ..SandboxSpec::default()
        })
        .await
        .expect_err("unknown template");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    kiln.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A cold create against a host-agent "VM" whose script runs `before` (with
/// `$STARTS` counting the starts so far, this one included) ahead of the
/// agent: the create's outcome and how many starts it took.
async fn cold_create_with(
    dir: &std::path::Path,
    name: &str,
    before: &str,
) -> (kiln::Result<LaunchType>, usize) {
    let log = dir.join(format!("{name}.starts"));
    let mut config = common::host_config(&dir.join(format!("{name}.state")), 0);
    config.launcher = common::wrapped_agent(
        dir,
        name,
        &format!(
            "echo start >> {log}\nSTARTS=$(wc -l < {log})\n{before}",
            log = log.display()
        ),
        "",
    );
    let kiln = Kiln::embedded(config).await.expect("embedded kiln");
    let outcome = match kiln.sandboxes().create(SandboxSpec::default()).await {
        Ok(sandbox) => {
            let launch = sandbox.cached_info().launch_type;
            sandbox.delete().await.expect("delete");
            Ok(launch)
        }
        Err(e) => Err(e),
    };
    assert_eq!(kiln.info().await.expect("info").vms, 0, "nothing leaked");
    kiln.shutdown().await;
    let starts = std::fs::read_to_string(&log).map_or(0, |s| s.lines().count());
    (outcome, starts)
}

#[tokio::test]
async fn a_cold_create_boots_again_after_a_guest_crash_but_not_after_a_setup_failure() {
    let dir = common::scratch("embedded-crash");
    let crashed = kiln_vmm::EXIT_GUEST_CRASHED;
    // The first start "crashes" like a guest (kiln-vmm's status); the second
    // is a working agent.
    let once = format!("[ \"$STARTS\" -gt 1 ] || exit {crashed}");
    let (outcome, starts) = cold_create_with(&dir, "crash-once", &once).await;
    assert_eq!(outcome.expect("the second boot serves"), LaunchType::Cold);
    assert_eq!(starts, 2);
    // A guest that crashes every time: two boots, then the error.
    let (outcome, starts) =
        cold_create_with(&dir, "crash-always", &format!("exit {crashed}")).await;
    let err = outcome.expect_err("never boots");
    assert!(matches!(err, Error::BootTimeout(_)), "{err}");
    assert_eq!(starts, 2);
    // A VMM that cannot set up the VM is not retried.
    let setup = format!("exit {}", kiln_vmm::EXIT_SETUP_FAILED);
    let (outcome, starts) = cold_create_with(&dir, "setup-fails", &setup).await;
    let err = outcome.expect_err("never boots");
    assert!(matches!(err, Error::BootTimeout(_)), "{err}");
    assert_eq!(starts, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_template_that_cannot_boot_backs_off_without_a_spawn_storm() {
    let dir = common::scratch("embedded-backoff");
    let mut config = common::host_config(&dir, 4);
    // A "VM" that exits at once: every boot fails.
    config.launcher = kiln::config::LauncherConfig::HostAgent {
        agent: "/bin/false".into(),
    };
    config.pool.backoff_base_ms = 200;
    config.pool.backoff_max_ms = 800;
    let kiln = Kiln::embedded(config).await.expect("embedded kiln");
    let mut events = kiln.events(0).await.expect("events");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pool = kiln.pool("host").await.expect("pool");
    assert_eq!(pool.ready, 0);
    assert!(pool.booting <= 1, "one probe at a time: {pool:?}");
    assert!(
        pool.last_error
            .as_deref()
            .is_some_and(|e| e.contains("before its agent answered")),
        "{pool:?}"
    );
    // 200 + 400 + 800 ms of backoff in 1.5 s: a handful of attempts,
    // not one per reconcile tick (50 ms).
    let mut failures = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        if e.expect("event").kind == kiln::model::EventKind::PoolError {
            failures += 1;
        }
    }
    assert!(
        (1..=6).contains(&failures),
        "{failures} failed boots in 1.5 s"
    );
    assert!(pool.consecutive_failures >= 1);
    // A create that cold boots reports the boot failure as such.
    let err = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect_err("cannot boot");
    assert!(matches!(err, Error::BootTimeout(_)), "{err}");
    assert_eq!(kiln.info().await.expect("info").vms, 0, "nothing leaked");
    kiln.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn idle_and_ttl_expire_with_a_notice_first() {
    let dir = common::scratch("embedded-expiry");
    let mut config = common::host_config(&dir, 0);
    config.timeouts.expiring_notice_secs = 1;
    let kiln = Kiln::embedded(config).await.expect("embedded kiln");
    let mut events = kiln.events(0).await.expect("events");
    let idle = kiln
        .sandboxes()
        .create(SandboxSpec {
            idle_timeout_secs: Some(2),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    let ttl = kiln
        .sandboxes()
        .create(SandboxSpec {
            ttl_secs: Some(3),
            idle_timeout_secs: Some(60),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    // A running exec is activity: the idle sandbox survives a 3 s exec.
    let out = idle.exec(["sleep", "3"]).output().await.expect("long exec");
    assert_eq!(out.result.exit_code, Some(0));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen
        .iter()
        .filter(|(k, _, _)| *k == kiln::model::EventKind::Expired)
        .count()
        < 2
    {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("both expire within 10 s")
            .expect("stream")
            .expect("event");
        seen.push((e.kind, e.sandbox_id.clone(), e.reason));
    }
    let find = |kind, id: &str| {
        seen.iter()
            .position(|(k, s, _)| *k == kind && s.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no {kind:?} for {id}: {seen:?}"))
    };
    for (id, reason) in [(idle.id(), EndReason::Idle), (ttl.id(), EndReason::Ttl)] {
        assert!(
            find(kiln::model::EventKind::Expiring, id) < find(kiln::model::EventKind::Expired, id)
        );
        let err = kiln.sandboxes().get(id).await.expect_err("expired");
        assert!(
            matches!(err, Error::SandboxExpired { reason: r, .. } if r == reason),
            "{id}: {err}"
        );
    }
    kiln.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_vm_that_never_answers_is_booted_once_more_then_reported() {
    let dir = common::scratch("embedded-silent");
    let mut config = common::host_config(&dir, 0);
    // A "VM" that starts and never answers: each start is counted, then
    // it sleeps instead of serving.
    let starts = dir.join("starts");
    config.launcher = common::wrapped_agent(
        &dir,
        "silent-agent",
        &format!("echo start >> {}; exec sleep 60", starts.display()),
        "",
    );
    config.timeouts.boot_timeout_secs = 1;
    let kiln = Kiln::embedded(config).await.expect("embedded kiln");
    let err = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect_err("a VM that never answers");
    assert!(matches!(err, Error::BootTimeout(_)), "{err}");
    let started = std::fs::read_to_string(&starts).expect("starts");
    assert_eq!(started.lines().count(), 2, "booted once more, not again");
    let _ = std::fs::remove_dir_all(dir);
}
