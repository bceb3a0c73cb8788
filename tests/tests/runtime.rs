//! Python, Node and bash programs on the python-node runtime image give
//! exactly what a real interpreter prints.

use std::time::Duration;

use kiln_agent::protocol::ExecRequest;
use kiln_e2e::vm::{boot_python_node, exec, exec_req, ok, sh, text};

const SHUTDOWN: Duration = Duration::from_secs(30);

#[test]
fn python_programs() {
    let vm = boot_python_node();
    let py = |code: &str| exec(&vm, &["python3", "-c", code], None);

    assert_eq!(
        ok(&py("print(2**100, 7/2, sum(range(10)))")),
        "1267650600228229401496703205376 3.5 45\n"
    );
    assert_eq!(
        ok(&py(
            "import json; print(json.dumps({'a': [1, 2]}, sort_keys=True))"
        )),
        "{\"a\": [1, 2]}\n"
    );
    assert_eq!(
        ok(&py(
            "import hashlib; print(hashlib.sha256(b'kiln').hexdigest())"
        )),
        format!("{}\n", sha256_hex(b"kiln"))
    );
    assert_eq!(
        ok(&py("import sqlite3; c = sqlite3.connect(':memory:'); c.execute('create table t(x)'); c.executemany('insert into t values (?)', [(i,) for i in range(5)]); print(c.execute('select sum(x) from t').fetchone()[0])")),
        "10\n"
    );
    assert_eq!(
        ok(&py("import subprocess; print(subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout.strip())")),
        "sub\n"
    );
    assert_eq!(
        ok(&py("print('héllo wörld ✓ 日本')")),
        "héllo wörld ✓ 日本\n"
    );
    let boom = py("def f():\n    raise ValueError('boom')\nf()");
    assert_eq!(boom.status.code, Some(1));
    let err = text(&boom.stderr);
    assert!(
        err.contains("Traceback (most recent call last)") && err.contains("ValueError: boom"),
        "stderr: {err}"
    );
    // A file written through the files API is there for the program.
    let data = "line one\nzwei ✓\n";
    let written = vm
        .upload("data/in put.txt", Some(0o644), data.as_bytes())
        .expect("upload");
    assert_eq!(written.size, data.len() as u64);
    assert_eq!(
        ok(&py(
            "print(open('data/in put.txt', encoding='utf-8').read().splitlines())"
        )),
        "['line one', 'zwei ✓']\n"
    );
    // An endless loop hits its timeout; the next program runs as usual.
    let spin = exec_req(
        &vm,
        ExecRequest {
            argv: vec!["python3".into(), "-c".into(), "while True: pass".into()],
            timeout_ms: Some(3_000),
            ..Default::default()
        },
        b"",
    );
    assert!(spin.status.timed_out, "status {:?}", spin.status);
    assert_eq!(ok(&py("print('after')")), "after\n");
    // Runs as the unprivileged sandbox user in its home directory.
    assert_eq!(
        ok(&py("import os; print(os.getuid(), os.getcwd())")),
        "1000 /home/sandbox\n"
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn node_programs() {
    let vm = boot_python_node();
    let node = |code: &str| exec(&vm, &["node", "-e", code], None);
    assert_eq!(
        ok(&node("console.log(1 + 1, [1, 2].map(x => x * 3))")),
        "2 [ 3, 6 ]\n"
    );
    assert_eq!(
        ok(&node("const fs = require('fs'); fs.writeFileSync('/tmp/n.txt', 'abc'); console.log(fs.readFileSync('/tmp/n.txt', 'utf8'))")),
        "abc\n"
    );
    assert_eq!(
        ok(&node(
            "console.log(require('crypto').createHash('sha256').update('kiln').digest('hex'))"
        )),
        format!("{}\n", sha256_hex(b"kiln"))
    );
    assert_eq!(
        ok(&node(
            "console.log(require('child_process').execSync('echo child').toString().trim())"
        )),
        "child\n"
    );
    let boom = node("throw new Error('kaboom')");
    assert_eq!(boom.status.code, Some(1));
    assert!(
        text(&boom.stderr).contains("Error: kaboom"),
        "stderr: {}",
        text(&boom.stderr)
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

#[test]
fn bash_pipelines() {
    let vm = boot_python_node();
    let out = exec(
        &vm,
        &["bash", "-c", "set -o pipefail; seq 1 100 | grep 7 | sort -rn | head -3 | tr '\\n' ' '; echo ${BASH_VERSINFO[0]} > /dev/null"],
        None,
    );
    assert_eq!(ok(&out), "97 87 79 ");
    let out = sh(&vm, "echo x | wc -c");
    assert_eq!(ok(&out).trim(), "2");
    vm.shutdown(SHUTDOWN).expect("shutdown");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
