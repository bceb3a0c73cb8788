//! The template registry with a running daemon (host agents as VMs):
//! `kiln template build` registers a template the daemon picks up, its pool
//! fills, a rebuild rolls the pool, and removal is refused while the
//! template is in use.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::Daemon;
use kiln::model::SandboxSpec;
use kiln::{Error, Kiln};

/// A file with an erofs superblock magic (all the registry checks) and
/// `fill` bytes around it.
fn fake_erofs(path: &Path, fill: u8) {
    let mut bytes = vec![fill; 8192];
    bytes[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    std::fs::write(path, bytes).expect("image");
}

fn kiln_cli(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("template")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run kiln template")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln template build t --image img --mem-mib 200 --env env extra...`.
fn build_t(state: &Path, img: &str, env: &str, extra: &[&str]) {
    let mut args = vec![
        "build",
        "t",
        "--image",
        img,
        "--mem-mib",
        "200",
        "--env",
        env,
    ];
    args.extend_from_slice(extra);
    ok(kiln_cli(state, &args));
}

/// Polls `check` every 20 ms for up to 30 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pids of the host agents (VMs) of the daemon on `state`.
fn agents(state: &Path) -> Vec<i32> {
    let mut pids = common::pids_under(&state.to_string_lossy());
    pids.sort_unstable();
    pids
}

/// A sandbox of template `t` and what `echo $BUILD $PWD` prints in it.
async fn create_and_echo(kiln: &Kiln) -> (kiln::Sandbox, String) {
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            template: Some("t".into()),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    let out = sandbox
        .exec(["sh", "-c", "echo $BUILD $PWD"])
        .output()
        .await
        .expect("exec");
    (sandbox, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn registered_templates_pool_roll_on_rebuild_and_resist_removal_in_use() {
    let dir = common::scratch("templates");
    let state = dir.join("state");
    let daemon = Daemon::start(&common::host_config(&state, 0));
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let image = dir.join("image.erofs");
    fake_erofs(&image, 1);
    let img = image.to_str().expect("utf-8");

    // Bad input first: nothing is registered.
    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0u8; 4096]).expect("junk");
    let out = kiln_cli(
        &state,
        &["build", "t", "--image", junk.to_str().expect("utf-8")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an erofs or ext4 image"));
    for (name, needle) in [
        ("Bad", "bad template name"),
        ("minimal", "built-in"),
        ("host", "config file"),
    ] {
        let out = kiln_cli(&state, &["build", name, "--image", img]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{name}: {err}"
        );
    }

    build_t(&state, img, "BUILD=1", &["--workdir", "/tmp"]);
    let listed = ok(kiln_cli(&state, &["ls"]));
    assert!(listed.lines().any(|l| l.starts_with("t ")), "{listed}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(kiln_cli(&state, &["show", "t", "--json"]))).expect("json");
    assert_eq!(shown["mem_mib"], 200);
    let hash1 = shown["image_sha256"].as_str().expect("hash").to_string();

    // The daemon picks it up: listed with its hash, a pool fills.
    until("the daemon lists t", async || {
        kiln.templates()
            .await
            .expect("templates")
            .iter()
            .any(|t| t.name == "t")
    })
    .await;
    let t = kiln
        .templates()
        .await
        .expect("templates")
        .into_iter()
        .find(|t| t.name == "t");
    let t = t.expect("t");
    assert_eq!(
        (t.source.as_str(), t.content_hash.as_deref(), t.mem_mib),
        ("registry", Some(hash1.as_str()), 200)
    );
    kiln.set_pool_target("t", 2).await.expect("pool target");
    until("the pool fills", async || {
        kiln.pool("t").await.expect("pool").ready == 2
    })
    .await;

    // A sandbox of it has the template's environment and directory.
    let (sandbox, out) = create_and_echo(&kiln).await;
    assert_eq!(out, "1 /tmp\n");
    until("the pool refills", async || {
        kiln.pool("t").await.expect("pool").ready == 2
    })
    .await;
    let before = agents(&state);
    assert_eq!(before.len(), 3, "two pooled, one in the sandbox");

    // A rebuild rolls the pool: both pooled agents replaced, the sandbox's
    // kept.
    fake_erofs(&image, 2);
    build_t(&state, img, "BUILD=2", &[]);
    until("the daemon sees the new hash", async || {
        let ts = kiln.templates().await.expect("templates");
        ts.iter()
            .any(|t| t.name == "t" && t.content_hash.as_deref() != Some(hash1.as_str()))
    })
    .await;
    until("the pool rolls", async || {
        let now = agents(&state);
        kiln.pool("t").await.expect("pool").ready == 2
            && now.len() == 3
            && now.iter().filter(|p| before.contains(p)).count() == 1
    })
    .await;
    let out = sandbox
        .exec(["true"])
        .output()
        .await
        .expect("the old sandbox runs on");
    assert_eq!(out.result.exit_code, Some(0));
    let (fresh, out) = create_and_echo(&kiln).await;
    // The rebuilt template's env, and no workdir: the home (the host
    // agent's is under its run directory).
    assert!(
        out.starts_with("2 /") && out.ends_with("/home/sandbox\n"),
        "{out}"
    );
    fresh.delete().await.expect("delete");

    // Removal: refused while the pool is live, then while a sandbox uses
    // it (through the CLI, which goes to the daemon, and the API).
    let template_dir = state.join("templates/t");
    let out = kiln_cli(&state, &["rm", "t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in use") && err.contains("pool target"),
        "{err}"
    );
    assert!(
        template_dir.join("template.json").is_file(),
        "files still there"
    );
    kiln.set_pool_target("t", 0).await.expect("target 0");
    match kiln.delete_template("t").await {
        Err(Error::TemplateInUse { template, reason }) => {
            assert_eq!(template, "t");
            assert!(reason.contains("1 sandbox"), "{reason}");
        }
        other => panic!("expected template_in_use, got {other:?}"),
    }
    assert!(
        template_dir.join("template.json").is_file(),
        "files still there"
    );
    sandbox.delete().await.expect("delete");
    // The sandbox's VM goes a moment after its tombstone.
    until("rm succeeds once nothing uses t", async || {
        kiln_cli(&state, &["rm", "t"]).status.success()
    })
    .await;
    assert!(!template_dir.exists(), "removed");
    assert!(!kiln
        .templates()
        .await
        .expect("templates")
        .iter()
        .any(|t| t.name == "t"));
    assert!(matches!(kiln.pool("t").await, Err(Error::NotFound(_))));
    let err = kiln
        .delete_template("python-node")
        .await
        .expect_err("built in");
    assert!(err.to_string().contains("built in"), "{err}");
    let err = kiln.delete_template("t").await.expect_err("gone");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[test]
fn without_a_daemon_rm_removes_directly_and_unknown_names_are_clear() {
    let dir = common::scratch("templates-direct");
    let state = dir.join("state");
    let image = dir.join("image.erofs");
    fake_erofs(&image, 3);
    let img = image.to_str().expect("utf-8");
    ok(kiln_cli(&state, &["build", "solo", "--image", img]));
    let out = kiln_cli(&state, &["show", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no template \"nope\""));
    ok(kiln_cli(&state, &["rm", "solo"]));
    assert!(!state.join("templates/solo").exists());
    let out = kiln_cli(&state, &["rm", "solo"]);
    assert!(!out.status.success());
    let out = kiln_cli(
        &state,
        &["build", "p", "--debian-packages", "jq", "--pip", "requests"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pip needs python3-pip"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--template", "nope", "--state-dir"])
        .arg(&state)
        .args(["--", "true"])
        .output()
        .expect("kiln run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown template \"nope\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_restarted_daemon_replaces_the_pooled_vms_of_registry_templates() {
    let dir = common::scratch("templates-restart");
    let state = dir.join("state");
    let mut daemon = Daemon::start(&common::host_config(&state, 0));
    let image = dir.join("image.erofs");
    fake_erofs(&image, 4);
    build_t(&state, image.to_str().expect("utf-8"), "BUILD=1", &[]);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    until("the daemon lists t", async || kiln.pool("t").await.is_ok()).await;
    kiln.set_pool_target("t", 1).await.expect("pool target");
    until("the pool fills", async || {
        kiln.pool("t").await.expect("pool").ready == 1
    })
    .await;
    let before = agents(&state);
    assert_eq!(before.len(), 1);
    // Killed, the daemon cannot tell whether the template was rebuilt
    // before it came back: the re-adopted pooled VM is replaced.
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let restarted = daemon.respawn();
    let kiln = Kiln::connect_unix(&restarted.socket)
        .await
        .expect("connect");
    until("the pooled VM is replaced", async || {
        let now = agents(&state);
        kiln.pool("t")
            .await
            .is_ok_and(|p| p.ready == 1 && p.target == 1)
            && now.len() == 1
            && now != before
    })
    .await;
}

/// `kiln template build` with writes capped at `blocks` 512-byte blocks
/// (a full disk as the copy sees it: writes past the cap fail).
fn build_capped(state: &Path, name: &str, image: &Path, blocks: u32) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" template build {name} --image \"$1\" --state-dir \"$2\""
        ))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg(image)
        .arg(state)
        .output()
        .expect("run kiln template build")
}

#[test]
fn a_copy_that_cannot_be_written_leaves_nothing_behind() {
    let dir = common::scratch("templates-full");
    let state = dir.join("state");
    let small = dir.join("small.erofs");
    fake_erofs(&small, 5);
    let mut big = vec![6u8; 1 << 20];
    big[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    let big_path = dir.join("big.erofs");
    std::fs::write(&big_path, big).expect("big image");

    // A first build: no template, no directory.
    let out = build_capped(&state, "full", &big_path, 64);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("File too large"),
        "{err}"
    );
    assert!(!state.join("templates/full").exists(), "nothing half left");

    // A rebuild: the old template stands, no temporary is left.
    ok(kiln_cli(
        &state,
        &["build", "full", "--image", small.to_str().expect("utf-8")],
    ));
    let manifest = std::fs::read(state.join("templates/full/template.json")).expect("manifest");
    let out = build_capped(&state, "full", &big_path, 64);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read(state.join("templates/full/template.json")).expect("manifest"),
        manifest,
        "the manifest is untouched"
    );
    let files = std::fs::read_dir(state.join("templates/full"))
        .expect("ls")
        .count();
    assert_eq!(files, 2, "the manifest and the old image only");
}
