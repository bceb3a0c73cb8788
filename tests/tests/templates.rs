//! Registry templates on real VMs: `kiln template build --image` of the
//! python-node image with another environment, directory and memory;
//! `kiln run --template` boots it; a daemon on the same state directory
//! pools it, serves sandboxes of it, and removes it once unused.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kiln::model::SandboxSpec;
use kiln::Kiln;
use kiln_e2e::daemon::{scratch, Daemon};
use kiln_e2e::{artifact, require_kvm};

/// Guest memory of the template (the python-node default is 512).
const MEM_MIB: u32 = 384;

/// `kiln SUBCOMMAND --state-dir STATE ARGS...`.
fn kiln(subcommand: &str, state: &Path, args: &[&str]) -> Output {
    Command::new(artifact("bin/kiln"))
        .arg(subcommand)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run kiln")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the probe prints: the template's variable, the directory, and the
/// guest's memory in MiB.
const PROBE: &str = "echo $GREETING; pwd; awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo";

fn check_probe(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(&lines[..2], ["hello from t", "/tmp"], "{out}");
    let mem: u32 = lines[2].parse().expect("MemTotal");
    assert!(
        mem <= MEM_MIB && mem > MEM_MIB - 64,
        "MemTotal {mem} MiB for a {MEM_MIB} MiB template"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_template_runs_with_kiln_run_and_the_daemon() {
    require_kvm();
    let dir = scratch("templates");
    let state = dir.join("state");
    let image = artifact("guest/python-node.erofs");
    let image = image.to_str().expect("utf-8");
    let mem = MEM_MIB.to_string();
    ok(kiln(
        "template",
        &state,
        &[
            "build",
            "t",
            "--image",
            image,
            "--mem-mib",
            &mem,
            "--env",
            "GREETING=hello from t",
            "--workdir",
            "/tmp",
        ],
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(kiln("template", &state, &["show", "t", "--json"])))
            .expect("manifest");
    let hash = shown["image_sha256"].as_str().expect("hash").to_string();

    // kiln run, no daemon.
    check_probe(&ok(kiln(
        "run",
        &state,
        &["--template", "t", "--", "sh", "-c", PROBE],
    )));

    // A daemon on the same state directory serves it from a pool.
    let daemon = Daemon::start(
        &dir,
        "default_template = \"minimal\"\n[pool]\nfrom_snapshot = false\n",
    );
    let client = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let t = client
        .templates()
        .await
        .expect("templates")
        .into_iter()
        .find(|t| t.name == "t")
        .expect("t listed");
    assert_eq!(
        (t.source.as_str(), t.content_hash.as_deref(), t.available),
        ("registry", Some(hash.as_str()), true),
        "{t:?}"
    );
    client.set_pool_target("t", 1).await.expect("pool");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while client.pool("t").await.expect("pool").ready < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sandbox = client
        .sandboxes()
        .create(SandboxSpec {
            template: Some("t".into()),
            ..SandboxSpec::default()
        })
        .await
        .expect("create");
    let out = sandbox
        .exec(["sh", "-c", PROBE])
        .output()
        .await
        .expect("exec");
    check_probe(&String::from_utf8_lossy(&out.stdout));
    let out = sandbox
        .exec(["python3", "-c", "import os; print(os.environ['GREETING'])"])
        .output()
        .await
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from t\n");

    // In use: refused; unused: removed.
    let err = client.delete_template("t").await.expect_err("in use");
    assert!(matches!(err, kiln::Error::TemplateInUse { .. }), "{err}");
    sandbox.delete().await.expect("delete");
    client.set_pool_target("t", 0).await.expect("pool off");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.delete_template("t").await {
            Ok(()) => break,
            Err(kiln::Error::TemplateInUse { reason, .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still in use: {reason}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("delete_template: {e}"),
        }
    }
    assert!(!state.join("templates/t").exists());
    drop(daemon);
}
