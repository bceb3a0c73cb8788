//! The batteries of the default (`python-node`) image in a fresh sandbox:
//! every tool runs as the sandbox user, pip and npm install local packages
//! into the user's home, and without network they fail fast with a message.

use std::time::Duration;

use kiln_agent::protocol::ExecRequest;
use kiln_e2e::packages::{MAKE_NPM_PACKAGE, MAKE_WHEEL, NPM_TARBALL, WHEEL};
use kiln_e2e::vm::{boot_python_node, exec_req, Output, TestVm};

const SHUTDOWN: Duration = Duration::from_secs(30);

/// Longest a pip or npm command may take to give up without network. Their
/// config in the image (/etc/pip.conf, /etc/npmrc) allows one quick retry;
/// the rest is interpreter start-up, ~12x slower in the testbed than native.
const OFFLINE_FAILURE_BOUND: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `bash -c script` with `timeout`, as the sandbox user in its home.
fn bash(vm: &TestVm, script: &str, timeout: Duration) -> Output {
    exec_req(
        vm,
        ExecRequest {
            argv: vec!["bash".into(), "-c".into(), script.into()],
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        },
        b"",
    )
}

/// Runs `script` (bash, `set -e`), fails the test unless it exits 0;
/// returns its stdout.
fn ok(vm: &TestVm, script: &str) -> String {
    let out = bash(vm, &format!("set -e\n{script}"), Duration::from_secs(300));
    assert_eq!(
        out.status.code,
        Some(0),
        "script:\n{script}\nstatus {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn every_tool_runs_in_a_fresh_sandbox() {
    let vm = boot_python_node();
    // Each prints its name or version: the binary is there and its
    // libraries load.
    for (cmd, expect) in [
        ("curl --version", "curl "),
        ("wget --version", "GNU Wget"),
        ("pip --version", "python 3.11"),
        ("npm --version", "9."),
        ("git --version", "git version"),
        ("jq --version", "jq-"),
        ("file --version", "file-"),
        ("less --version", "less "),
        ("vi --version", "VIM - Vi IMproved"),
        ("editor --version", "VIM - Vi IMproved"),
        ("sqlite3 --version", "3."),
        ("perl -e 'print qq(perl ok\\n)'", "perl ok"),
        ("killall --version 2>&1", "killall (PSmisc)"),
    ] {
        let out = ok(&vm, cmd);
        assert!(out.contains(expect), "{cmd}: {out}");
    }
    // Processes: ps sees a background job of the sandbox user; killall
    // ends it.
    let ps = ok(
        &vm,
        "sleep 600 & ps -o user=,comm= -p $!; killall sleep; wait $! || echo killed",
    );
    assert_eq!(
        ps.split_whitespace().collect::<Vec<_>>(),
        ["sandbox", "sleep", "killed"]
    );
    assert!(ok(&vm, "top -b -n 1 | head -1").starts_with("top - "));
    // git: a repository and a commit (templates copied, no global config).
    let log = ok(
        &vm,
        "git init -q repo && cd repo && git -c user.name=a -c user.email=a@b commit -q --allow-empty -m x && git log --format=%s",
    );
    assert_eq!(log, "x\n");
    // diff and patch round-trip; jq and sqlite3 compute.
    let patched = ok(
        &vm,
        "printf 'a\\nb\\n' > old; printf 'a\\nc\\n' > new; diff -u old new > d.patch || true
         patch -s old < d.patch; cat old",
    );
    assert_eq!(patched, "a\nc\n");
    assert_eq!(ok(&vm, "echo '{\"a\":[1,2,3]}' | jq '.a | add'"), "6\n");
    assert_eq!(
        ok(
            &vm,
            "sqlite3 db 'create table t(x); insert into t values (4),(5); select sum(x) from t;'"
        ),
        "9\n"
    );
    // Archives and compressors round-trip a file.
    let roundtrip = ok(
        &vm,
        "seq 1 2000 > f; sum=$(sha256sum < f)
         zip -q f.zip f && mkdir z && unzip -q f.zip -d z && [ \"$(sha256sum < z/f)\" = \"$sum\" ]
         xz -k f && bzip2 -k f && rm f && xz -d f.xz && [ \"$(sha256sum < f)\" = \"$sum\" ]
         rm f && bzip2 -d f.bz2 && [ \"$(sha256sum < f)\" = \"$sum\" ]
         file -b f.zip; echo round-trips",
    );
    assert!(
        roundtrip.starts_with("Zip archive data") && roundtrip.ends_with("round-trips\n"),
        "{roundtrip}"
    );
    // The data stack imports; matplotlib's default backend writes a PNG
    // (its first import builds the font cache: give it time).
    let out = bash(
        &vm,
        "set -e
         python3 -c 'import numpy, pandas, matplotlib, requests
import matplotlib.pyplot as plt
df = pandas.DataFrame({\"x\": numpy.arange(5), \"y\": numpy.arange(5) ** 2})
plt.plot(df.x, df.y)
plt.savefig(\"plot.png\")
print(matplotlib.get_backend().lower(), int(df.y.sum()), requests.__version__ != \"\")'
         file -b plot.png",
        Duration::from_secs(600),
    );
    assert_eq!(out.status.code, Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("agg 30 True\nPNG image data"),
        "stdout: {stdout}"
    );
    let png = vm.download_vec("plot.png").expect("download the plot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn pip_and_npm_install_local_packages_as_the_sandbox_user() {
    let vm = boot_python_node();
    vm.upload(
        "make_wheel.py",
        None,
        std::io::Cursor::new(MAKE_WHEEL.as_bytes().to_vec()),
    )
    .expect("upload");
    // pip: into ~/.local (site-packages is read-only to uid 1000), the
    // console script on the default PATH.
    let pip = ok(
        &vm,
        &format!(
            "python3 make_wheel.py
             pip install --no-index ./{WHEEL}
             python3 -c 'import kiln_hello; kiln_hello.greet(); print(kiln_hello.__file__)'
             kiln-hello; command -v kiln-hello"
        ),
    );
    assert!(
        pip.contains("Successfully installed kiln-hello-1.0")
            && pip.contains(
                "hello from a wheel\n/home/sandbox/.local/lib/python3.11/site-packages/kiln_hello/__init__.py\n\
                 hello from a wheel\n/home/sandbox/.local/bin/kiln-hello\n"
            ),
        "{pip}"
    );
    // In a venv pip installs into the venv (pip.conf does not force user
    // installs, which a venv refuses).
    let venv = ok(
        &vm,
        &format!(
            "python3 -m venv venv
             venv/bin/pip install -q --no-index ./{WHEEL}
             venv/bin/python -c 'import kiln_hello; print(kiln_hello.__file__)'"
        ),
    );
    assert_eq!(
        venv,
        "/home/sandbox/venv/lib/python3.11/site-packages/kiln_hello/__init__.py\n"
    );
    // npm: a tarball made with npm pack, installed into a project and
    // globally (into ~/.npm-global, its bin on the default PATH).
    let npm = ok(
        &vm,
        &format!(
            "({MAKE_NPM_PACKAGE})
             mkdir proj && cd proj
             npm install --no-audit --no-fund ../{NPM_TARBALL} >/dev/null
             node -e 'console.log(require(\"kiln-pad\")(\"req\", 5))'
             npm install -g --no-audit --no-fund ../{NPM_TARBALL} >/dev/null
             kiln-pad; command -v kiln-pad"
        ),
    );
    assert_eq!(
        npm,
        "kiln-pad-1.0.0.tgz\n..req\n..cli\n/home/sandbox/.npm-global/bin/kiln-pad\n"
    );
    // All of it is the user's: nothing needed root.
    assert_eq!(
        ok(&vm, "stat -c %U .local .npm-global proj/node_modules"),
        "sandbox\nsandbox\nsandbox\n"
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn pip_and_npm_fail_fast_without_network() {
    let vm = boot_python_node();
    for (tool, install, messages) in [
        (
            "pip",
            "pip install tqdm",
            &[
                "Failed to establish a new connection",
                "No matching distribution found for tqdm",
            ][..],
        ),
        (
            "npm",
            "npm install left-pad",
            &["npm ERR! network request to https://registry.npmjs.org/left-pad failed"][..],
        ),
    ] {
        // The first run in a fresh VM reads the tool's files from the image
        // (slow in the testbed); the second shows what the network costs.
        let version = bash(&vm, &format!("{tool} --version"), Duration::from_secs(300));
        let runs: Vec<Output> = (0..2)
            .map(|_| bash(&vm, install, Duration::from_secs(300)))
            .collect();
        let ms = |o: &Output| o.status.duration_ms;
        eprintln!(
            "{tool}: --version {} ms; '{install}' failed in {} ms, then {} ms",
            ms(&version),
            ms(&runs[0]),
            ms(&runs[1])
        );
        for out in &runs {
            let stderr = text(&out.stderr);
            assert!(
                !out.status.timed_out && out.status.code.is_some_and(|c| c != 0),
                "{install}: {:?}\n{stderr}",
                out.status
            );
            for m in messages {
                assert!(stderr.contains(m), "{install}: no {m:?} in:\n{stderr}");
            }
        }
        let took = Duration::from_millis(ms(&runs[1]));
        assert!(took < OFFLINE_FAILURE_BOUND, "{install} took {took:?}");
        if tool == "pip" {
            // pip.conf's single retry is what pip did (its default is 5,
            // with backoff).
            let stderr = text(&runs[1].stderr);
            assert_eq!(stderr.matches("WARNING: Retrying").count(), 1, "{stderr}");
        }
    }
    vm.shutdown(SHUTDOWN).expect("shutdown");
}
