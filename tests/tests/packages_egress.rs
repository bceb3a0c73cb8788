//! pip and npm through the egress proxy, unchanged: a `python-node`
//! sandbox under `kiln serve` whose allowlist names the testbed's loopback
//! installs from a package index and an npm registry served there (the
//! packages are built in the sandbox first and read out through the files
//! API). The guest has no interface but lo, so every request the server
//! sees went through the agent's forwarder and the daemon's proxy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::model::{EgressSpec, SandboxSpec};
use kiln::{Kiln, Sandbox};
use kiln_e2e::daemon::{scratch, Daemon};
use kiln_e2e::packages::{MAKE_NPM_PACKAGE, MAKE_WHEEL, NPM_TARBALL, WHEEL};

/// One pooled python-node VM; loopback allowed (the test-only allowance).
const CONFIG: &str = r#"
default_template = "python-node"
[templates.python-node]
base = "python-node"
pool_target = 1
[egress]
allow_private = ["127.0.0.0/8", "::1/128"]
"#;

/// Paths served (origin-form) -> content type and body (pip reads index
/// pages only when they say text/html).
type Routes = Arc<Mutex<HashMap<String, (&'static str, Vec<u8>)>>>;

/// A loopback HTTP server answering the routes (404 otherwise) and
/// recording each request's path; returns its port and the log.
fn http_server(routes: Routes) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let (routes, log) = (routes.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                // Through a proxy the target may be absolute.
                let path = match target.strip_prefix("http://") {
                    Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
                    None => target,
                }
                .to_string();
                let body = routes.lock().expect("routes").get(&path).cloned();
                log.lock().expect("log").push(path);
                let (status, (kind, body)) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", ("text/plain", b"not here".to_vec())),
                };
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                let _ = s.write_all(&body);
            });
        }
    });
    (port, seen)
}

/// Runs a bash script (`set -e`) in the sandbox with the proxy's
/// `NO_PROXY` cleared (it rightly exempts 127.0.0.1, the server's
/// address); fails the test unless it exits 0; returns stdout.
async fn ok(sandbox: &Sandbox, script: &str) -> String {
    let out = sandbox
        .exec(["bash", "-c", &format!("set -e\n{script}")])
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .output()
        .await
        .expect("exec");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.result.exit_code,
        Some(0),
        "script:\n{script}\nresult {:?}\nstdout: {stdout}\nstderr: {}",
        out.result,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn read(sandbox: &Sandbox, path: &str) -> Vec<u8> {
    let file = sandbox.files().read(path).await.expect("read");
    file.to_vec().await.expect("bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_and_npm_install_through_the_egress_proxy() {
    let routes: Routes = Arc::default();
    let (port, seen) = http_server(routes.clone());
    let dir = scratch("packages-egress");
    let daemon = Daemon::start(&dir, CONFIG);
    let kiln = Kiln::connect_unix(&daemon.socket).await.expect("connect");
    let sandbox = kiln
        .sandboxes()
        .create(SandboxSpec {
            egress: Some(EgressSpec {
                allow: vec![],
                cidrs: vec!["127.0.0.1/32".into()],
            }),
            ..SandboxSpec::default()
        })
        .await
        .expect("create with egress");

    // Build both packages in the sandbox and serve them on the testbed.
    sandbox
        .files()
        .write(
            "build/make_wheel.py",
            std::io::Cursor::new(MAKE_WHEEL.as_bytes().to_vec()),
        )
        .await
        .expect("upload");
    ok(
        &sandbox,
        &format!("cd build && python3 make_wheel.py && ({MAKE_NPM_PACKAGE})"),
    )
    .await;
    let wheel = read(&sandbox, &format!("build/{WHEEL}")).await;
    let tarball = read(&sandbox, &format!("build/{NPM_TARBALL}")).await;
    let base = format!("http://127.0.0.1:{port}");
    {
        let mut r = routes.lock().expect("routes");
        // PEP 503 simple index: pip asks for the normalized name.
        r.insert(
            "/simple/kiln-hello/".into(),
            (
                "text/html",
                format!("<html><body><a href=\"{base}/files/{WHEEL}\">{WHEEL}</a></body></html>")
                    .into_bytes(),
            ),
        );
        r.insert(
            format!("/files/{WHEEL}"),
            ("application/octet-stream", wheel),
        );
        // npm registry: the packument, then the tarball it names.
        r.insert(
            "/kiln-pad".into(),
            ("application/json", format!(
                r#"{{"name":"kiln-pad","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"kiln-pad","version":"1.0.0","main":"index.js","bin":{{"kiln-pad":"cli.js"}},"dist":{{"tarball":"{base}/kiln-pad/-/kiln-pad-1.0.0.tgz"}}}}}}}}"#
            )
            .into_bytes()),
        );
        r.insert(
            "/kiln-pad/-/kiln-pad-1.0.0.tgz".into(),
            ("application/octet-stream", tarball),
        );
    }

    let pip = ok(
        &sandbox,
        &format!(
            "echo $HTTP_PROXY
             pip install --index-url {base}/simple/ kiln-hello
             python3 -c 'import kiln_hello; kiln_hello.greet()'"
        ),
    )
    .await;
    assert!(
        pip.starts_with("http://127.0.0.1:3128\n")
            && pip.contains("Successfully installed kiln-hello-1.0")
            && pip.ends_with("hello from a wheel\n"),
        "{pip}"
    );
    let npm = ok(
        &sandbox,
        &format!(
            "mkdir proj && cd proj
             npm install --no-audit --no-fund --registry {base}/ kiln-pad >/dev/null
             node -e 'console.log(require(\"kiln-pad\")(\"net\", 5))'
             npm install -g --no-audit --no-fund --registry {base}/ kiln-pad >/dev/null
             kiln-pad"
        ),
    )
    .await;
    assert_eq!(npm, "..net\n..cli\n");
    let seen = seen.lock().expect("log").clone();
    for path in [
        "/simple/kiln-hello/".to_string(),
        format!("/files/{WHEEL}"),
        "/kiln-pad".into(),
        "/kiln-pad/-/kiln-pad-1.0.0.tgz".into(),
    ] {
        assert!(seen.contains(&path), "{path} not requested: {seen:?}");
    }
    sandbox.delete().await.expect("delete");
}
