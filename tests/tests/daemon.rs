//! `kiln serve` booting real microVMs: warm creates and execs through the
//! API, concurrent creates against a small pool, a VM killed under a live
//! sandbox, the daemon SIGKILLed and restarted (also in the middle of an
//! exec, which the guest agent keeps running), a template that cannot
//! boot, the admission limit.

use std::time::Duration;

use futures_util::StreamExt;
use kiln::model::{EventKind, ExecState, LaunchType, SandboxSpec};
use kiln::{EndReason, Error, Kiln, Sandbox};
use kiln_e2e::daemon::{scratch, Daemon};

const MINIMAL: &str = r#"
default_template = "minimal"
[templates.minimal]
base = "minimal"
mem_mib = 256
pool_target = POOL
"#;

/// For tests that count a daemon's VMs: no extra VM booting in the
/// background to take the template snapshot.
const NO_SNAPSHOTS: &str = "\n[pool]\nfrom_snapshot = false\n";

fn config(pool: u32, extra: &str) -> String {
    format!("{}{extra}", MINIMAL.replace("POOL", &pool.to_string()))
}

async fn wait_ready(kiln: &Kiln, template: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let p = kiln.pool(template).await.expect("pool");
        if p.ready >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool never reached {n}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_creates_exec_files_and_concurrent_creates() {
    let dir = scratch("warm");
    let mut daemon = Daemon::start(&dir, &config(2, ""));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    wait_ready(&kiln, "minimal", 2).await;

    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            env: [("WHO".into(), "api".into())].into(),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    assert_eq!(sandbox.cached_info().launch_type, LaunchType::Warm);
    let out = sandbox
        .exec(["sh", "-c", "echo hello $WHO; id -u"])
        .output()
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello api\n1000\n");
    let files = sandbox.files();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    files
        .write("d/blob", std::io::Cursor::new(data.clone()))
        .await
        .expect("write");
    let back = files
        .read("d/blob")
        .await
        .expect("read")
        .to_vec()
        .await
        .expect("bytes");
    assert!(back == data, "file round trip differs");
    let id = sandbox.id().to_string();
    sandbox.delete().await.expect("delete");
    let err = kiln.sandboxes().get(&id).await.expect_err("deleted");
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

    // Four creates at once against a pool of two: all succeed, the pool
    // serves what it has and the rest boot cold.
    wait_ready(&kiln, "minimal", 2).await;
    let creates = (0..4).map(|_| {
        let kiln = kiln.clone();
        tokio::spawn(async move { kiln.sandboxes().create(SandboxSpec::default()).await })
    });
    let mut sandboxes = Vec::new();
    for c in creates {
        sandboxes.push(c.await.expect("task").expect("create"));
    }
    let warm = sandboxes
        .iter()
        .filter(|s| s.cached_info().launch_type == LaunchType::Warm)
        .count();
    assert!(warm >= 2, "{warm} warm of 4");
    for (i, s) in sandboxes.iter().enumerate() {
        let out = s
            .exec(["echo", &i.to_string()])
            .output()
            .await
            .expect("exec");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    for s in sandboxes {
        s.delete().await.expect("delete");
    }
    assert!(daemon.stop(), "drain and exit 0");
    assert!(daemon.vmm_pids().is_empty(), "VMs left after the drain");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_vm_and_a_sigkilled_daemon() {
    let dir = scratch("restart");
    let mut daemon = Daemon::start(&dir, &config(0, NO_SNAPSHOTS));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let victim = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("cold create");
    assert_eq!(victim.cached_info().launch_type, LaunchType::Cold);
    let pids = daemon.vmm_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: kill(2) on the VM this test's daemon started.
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match kiln.sandboxes().get(victim.id()).await {
            Err(Error::SandboxExpired { reason, .. }) => {
                assert_eq!(reason, EndReason::VmDied);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "VM death unnoticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        kiln.info().await.expect("info").vms,
        0,
        "resources released"
    );

    let survivor = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    survivor
        .files()
        .write("note", std::io::Cursor::new(b"still here".to_vec()))
        .await
        .expect("write");
    let pids = daemon.vmm_pids();
    daemon.kill_and_restart();
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("reconnect");
    let again = kiln
        .sandboxes()
        .get(survivor.id())
        .await
        .expect("re-adopted");
    let out = again.exec(["cat", "note"]).output().await.expect("exec");
    assert_eq!(out.stdout, b"still here");
    assert_eq!(daemon.vmm_pids(), pids, "same VM, no new one, no orphan");
    assert!(daemon.stop());
    assert!(daemon.vmm_pids().is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits up to 120 s until exec `id` has produced chunk `seq`.
async fn wait_output(sandbox: &Sandbox, id: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = sandbox.processes().await.expect("list");
        let e = list.iter().find(|e| e.exec_id == id).expect("listed");
        if e.last_seq >= seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no output from {id}: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_outlives_a_sigkilled_daemon() {
    let dir = scratch("exec-restart");
    let mut daemon = Daemon::start(&dir, &config(0, NO_SNAPSHOTS));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("create");
    // Mid-exec: it has written, and waits for a line on stdin.
    let info = sandbox
        .exec(["sh", "-c", "echo before; read line; echo got $line; exit 5"])
        .keep_stdin_open()
        .detach()
        .await
        .expect("detach");
    wait_output(&sandbox, &info.exec_id, 1).await;
    let pids = daemon.vmm_pids();
    daemon.kill_and_restart();
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("reconnect");
    let sandbox = kiln
        .sandboxes()
        .get(sandbox.id())
        .await
        .expect("re-adopted");
    let list = sandbox.processes().await.expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (list[0].exec_id.as_str(), list[0].state),
        (info.exec_id.as_str(), ExecState::Running),
        "still listed, still running"
    );
    // Its output from before the kill is still readable...
    let so_far = sandbox
        .output_since(&info.exec_id, 0)
        .await
        .expect("attach")
        .output()
        .await
        .expect_err("it still runs: the stream ends with caught_up");
    assert!(matches!(so_far, Error::Conflict(_)), "{so_far}");
    let mut early = sandbox
        .output_since(&info.exec_id, 0)
        .await
        .expect("attach");
    let mut seen = Vec::new();
    while let Some(e) = early.next().await {
        seen.push(e.expect("event"));
    }
    assert!(
        matches!(&seen[0], kiln::model::ExecEvent::Stdout { data: Some(d), .. } if d == "before\n"),
        "{seen:?}"
    );
    // ...and it goes on: stdin through the new daemon, the rest attached.
    sandbox
        .exec_control(&info.exec_id)
        .append_stdin("later\n")
        .await
        .expect("stdin");
    let rest = sandbox
        .attach(&info.exec_id, 1)
        .await
        .expect("attach")
        .output()
        .await
        .expect("the rest");
    assert_eq!(String::from_utf8_lossy(&rest.stdout), "got later\n");
    assert_eq!(rest.result.exit_code, Some(5));
    assert_eq!(daemon.vmm_pids(), pids, "the same VM");
    assert!(daemon.stop());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_template_backs_off_and_the_admission_limit_holds() {
    let dir = scratch("broken");
    // The "kernel" is the initramfs: kiln-vmm refuses it at once.
    let broken = format!(
        r#"
[templates.broken]
kernel = {:?}
initramfs = {:?}
pool_target = 3
[pool]
backoff_base_ms = 1000
backoff_max_ms = 4000
[limits]
max_vms = 1
"#,
        kiln_e2e::artifact("guest/initramfs.cpio")
            .display()
            .to_string(),
        kiln_e2e::artifact("guest/initramfs.cpio")
            .display()
            .to_string(),
    );
    let daemon = Daemon::start(&dir, &config(0, &broken));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let mut events = kiln.events(0).await.expect("events");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pool = kiln.pool("broken").await.expect("pool");
    assert_eq!(pool.ready, 0);
    assert!(pool.booting <= 1, "{pool:?}");
    assert!(pool.consecutive_failures >= 1, "{pool:?}");
    assert!(pool.last_error.is_some(), "{pool:?}");
    let mut failures = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        if e.expect("event").kind == EventKind::PoolError {
            failures += 1;
        }
    }
    // 1 + 2 + 4 + 4 s of backoff in 8 s: a handful, never a storm.
    assert!(
        (1..=6).contains(&failures),
        "{failures} failed boots in 8 s"
    );

    // Admission: max_vms = 1 (with the broken pool off: its probes would
    // hold the slot for a moment).
    kiln.set_pool_target("broken", 0).await.expect("pool off");
    let first = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("first VM");
    let err = kiln
        .sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect_err("over the limit");
    assert!(
        matches!(&err, Error::HostCapacity { limit, .. } if limit == "max_vms"),
        "{err}"
    );
    assert_eq!(err.http_status(), 429);
    first.delete().await.expect("delete");
    kiln.sandboxes()
        .create(SandboxSpec::default())
        .await
        .expect("room again after delete");
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_refill_from_a_template_snapshot() {
    let dir = scratch("snapshot-pool");
    let mut daemon = Daemon::start(&dir, &config(1, ""));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    wait_ready(&kiln, "minimal", 1).await;
    // The first cold boot starts the template snapshot: one more VM boots
    // and snapshots itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while daemon.vm_starts("minimal", "snapshot") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no template snapshot: {}",
            daemon.get("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let root = daemon.state_dir.join("snapshots/minimal");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let complete = loop {
        let found = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("complete"))
            .find(|p| p.exists());
        if let Some(p) = found {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete snapshot under {}",
            root.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("template snapshot: {}", complete.display());
    // Three creates: the pooled VM and two restored clones (cold creates
    // restore too), then the pool refills by restoring.
    let mut sandboxes = Vec::new();
    for _ in 0..3 {
        sandboxes.push(
            kiln.sandboxes()
                .create(SandboxSpec::default())
                .await
                .expect("create"),
        );
    }
    wait_ready(&kiln, "minimal", 1).await;
    let memory = kiln.pool("minimal").await.expect("pool").memory;
    eprintln!("pooled clone's host memory: {memory:?}");
    assert!(memory.is_some_and(|m| m.vms >= 1 && m.rss_bytes > 0));
    let restores = daemon.vm_starts("minimal", "restore");
    assert!(
        restores >= 2,
        "{restores} restores: {}",
        daemon.get("/metrics")
    );
    // Clones are distinct machines: their entropy differs, their clock is
    // the host's.
    let mut seen = std::collections::BTreeSet::new();
    for s in &sandboxes {
        let out = s
            .exec([
                "sh",
                "-c",
                "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s",
            ])
            .output()
            .await
            .expect("exec");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let random = lines.next().unwrap_or_default().to_string();
        let guest_secs: u64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        let host_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(
            guest_secs.abs_diff(host_secs) <= 5,
            "guest clock {guest_secs} vs host {host_secs}"
        );
        assert_eq!(random.len(), 32, "{text}");
        assert!(
            seen.insert(random),
            "two sandboxes read the same random bytes"
        );
    }
    for s in sandboxes {
        s.delete().await.expect("delete");
    }
    assert!(daemon.stop(), "drain and exit 0");
    assert!(daemon.vmm_pids().is_empty(), "VMs left after the drain");
    let _ = std::fs::remove_dir_all(dir);
}
