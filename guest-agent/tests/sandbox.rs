//! Output cap and `--sandbox-root` confinement through the real agent
//! binary. Mounts and cgroups are guest-only and tested in the testbed.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{sh, Agent, TempDir};
use kiln_agent::client;
use kiln_agent::protocol::{ExecRequest, DEFAULT_MAX_OUTPUT_BYTES};

#[test]
fn output_beyond_the_cap_is_dropped_and_the_program_runs_on() {
    let agent = Agent::start();
    let req = ExecRequest {
        max_output_bytes: Some(1_000_000),
        timeout_ms: Some(60_000),
        ..sh("head -c 20000000 /dev/zero; echo done >&2; exit 0")
    };
    let out = agent.run(&req, &[]);
    assert_eq!(out.stdout.len(), 1_000_000);
    assert!(out.stderr.is_empty(), "stderr counts against the cap too");
    assert!(out.status.truncated);
    assert_eq!(out.status.code, Some(0), "{:?}", out.status);
    assert!(!out.status.timed_out);
    assert!(!out.status.oom_killed);
}

#[test]
fn cap_counts_stdout_and_stderr_together() {
    let agent = Agent::start();
    let req = ExecRequest {
        max_output_bytes: Some(10),
        ..sh("printf 123456; printf abcdef >&2; sleep 0.2; printf XYZ")
    };
    let out = agent.run(&req, &[]);
    assert_eq!(out.stdout.len() + out.stderr.len(), 10, "{:?}", out.status);
    assert!(out.status.truncated);
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn output_at_the_cap_is_not_truncated_and_zero_cap_sends_nothing() {
    let agent = Agent::start();
    let req = ExecRequest {
        max_output_bytes: Some(5),
        ..sh("printf 12345")
    };
    let out = agent.run(&req, &[]);
    assert_eq!(out.stdout, b"12345");
    assert!(!out.status.truncated);
    let req = ExecRequest {
        max_output_bytes: Some(0),
        ..sh("echo hi; echo err >&2")
    };
    let out = agent.run(&req, &[]);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert!(out.status.truncated);
    assert_eq!(out.status.code, Some(0));
}

#[test]
fn default_cap_is_sixteen_mib() {
    let agent = Agent::start();
    let out = agent.run(
        &ExecRequest {
            timeout_ms: Some(60_000),
            ..sh("head -c 17000000 /dev/zero")
        },
        &[],
    );
    assert_eq!(out.stdout.len() as u64, DEFAULT_MAX_OUTPUT_BYTES);
    assert!(out.status.truncated);
}

#[test]
fn unconfined_agent_says_so_in_pong() {
    let agent = Agent::start();
    let pong = client::ping(&mut agent.connect()).expect("ping");
    assert!(pong.sandbox.contains("unconfined"), "{}", pong.sandbox);
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A minimal root: static busybox and a few applets, `/tmp` 1777.
fn busybox_root() -> Option<TempDir> {
    let busybox = Path::new("/bin/busybox");
    if !is_root() || !busybox.exists() {
        eprintln!("skipping: needs root and /bin/busybox");
        return None;
    }
    let dir = TempDir::new("root");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "id", "pwd", "cat", "touch", "ls", "env", "echo"] {
        symlink("busybox", bin.join(applet)).expect("symlink");
    }
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    Some(dir)
}

fn confined_agent(root: &TempDir) -> Agent {
    Agent::start_with(&[OsStr::new("--sandbox-root"), root.path().as_os_str()])
}

#[test]
fn sandbox_root_runs_programs_chrooted_as_uid_1000() {
    let Some(root) = busybox_root() else { return };
    let agent = confined_agent(&root);
    let pong = client::ping(&mut agent.connect()).expect("ping");
    assert!(pong.sandbox.contains("user 1000"), "{}", pong.sandbox);

    let out = agent.run(
        &sh("id -u; id -g; id -G; pwd; echo $HOME; echo $PATH; umask; ls /"),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code, Some(0), "{text} {:?}", out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "1000",
            "1000",
            "1000",
            "/home/sandbox",
            "/home/sandbox",
            // The user's pip and npm bin directories first.
            "/home/sandbox/.local/bin:/home/sandbox/.npm-global/bin:/usr/local/bin:/usr/bin:/bin",
            "0022"
        ]
    );
    let mut listing = lines[7..].to_vec();
    listing.sort_unstable();
    assert_eq!(listing, ["bin", "home", "tmp"], "chrooted: {text}");

    // The home was created for the user; the rest of the root is not theirs.
    let out = agent.run(
        &sh("touch ~/mine && touch /tmp/t && ls -ln ~/mine; touch /bin/x"),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 1000 "), "{text}");
    assert_ne!(out.status.code, Some(0), "wrote into /bin");
    assert!(root.path().join("home/sandbox/mine").exists());
    assert!(!root.path().join("bin/x").exists());
}

#[test]
fn sandbox_cwd_is_resolved_inside_the_root() {
    let Some(root) = busybox_root() else { return };
    let agent = confined_agent(&root);
    let run_in = |cwd: &str| {
        agent.run(
            &ExecRequest {
                cwd: Some(cwd.into()),
                ..sh("pwd")
            },
            &[],
        )
    };
    assert_eq!(run_in("/tmp").stdout, b"/tmp\n");
    assert_eq!(run_in("/").stdout, b"/\n");
    // Relative to the home; ".." cannot climb out of the chroot.
    std::fs::create_dir_all(root.path().join("home/sandbox/sub")).expect("sub");
    assert_eq!(run_in("sub").stdout, b"/home/sandbox/sub\n");
    assert_eq!(run_in("../../../../..").stdout, b"/\n");
    // The host path of the root does not exist inside it.
    let host_path = root.path().join("tmp");
    let err = client::exec(
        &mut agent.connect(),
        &ExecRequest {
            cwd: Some(host_path.display().to_string()),
            ..sh("pwd")
        },
        &[],
        |_| {},
        |_| {},
    )
    .expect_err("cwd outside the root must fail");
    assert!(err.to_string().contains("SpawnFailed"), "{err}");
    // The agent keeps serving.
    assert_eq!(run_in("/tmp").status.code, Some(0));
}

#[test]
fn sandbox_home_can_be_overridden_by_env() {
    let Some(root) = busybox_root() else { return };
    let agent = confined_agent(&root);
    let out = agent.run(
        &ExecRequest {
            env: vec![("HOME".into(), "/tmp".into())],
            ..sh("echo $HOME")
        },
        &[],
    );
    assert_eq!(out.stdout, b"/tmp\n");
}
