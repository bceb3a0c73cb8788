//! Shared by the host-level tests: a real `kiln-agent --listen-unix`
//! process stands in for each VM (the host-agent launcher), so the core,
//! the HTTP API and the client run against the real agent and protocol.

#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::config::{Config, LauncherConfig, TemplateConfig};

/// The `kiln-agent` binary (built on first use when `cargo test -p kiln`
/// did not build it).
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test exe");
            let target = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_path_buf();
            let agent = target.join("kiln-agent");
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "kiln-agent",
                    "--bin",
                    "kiln-agent",
                ])
                .status()
                .expect("cargo build kiln-agent");
            assert!(status.success(), "building kiln-agent failed");
            assert!(agent.is_file(), "{} missing", agent.display());
            agent
        })
        .clone()
}

/// A host-agent launcher config whose agent runs through a shell script
/// `dir/name`: `before` first, then the real agent with its arguments and
/// `extra_args`.
pub fn wrapped_agent(dir: &Path, name: &str, before: &str, extra_args: &str) -> LauncherConfig {
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{before}\nexec {} \"$@\" {extra_args}\n",
            agent_binary().display()
        ),
    )
    .expect("agent script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    LauncherConfig::HostAgent { agent: script }
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A config whose VMs are host agents: template `host` (pool of
/// `pool_target`), small limits, fast backoff.
pub fn host_config(state_dir: &Path, pool_target: u32) -> Config {
    let mut c = Config {
        state_dir: state_dir.to_path_buf(),
        default_template: "host".into(),
        launcher: LauncherConfig::HostAgent {
            agent: agent_binary(),
        },
        ..Config::default()
    };
    c.templates.insert(
        "host".into(),
        TemplateConfig {
            base: None,
            kernel: None,
            initramfs: None,
            image: None,
            vcpus: 1,
            mem_mib: 128,
            kernel_args: String::new(),
            huge_pages: true,
            disk_mib: None,
            pool_target,
            egress: None,
        },
    );
    c.limits.max_vms = 8;
    c.limits.max_memory_mib = 8 * 128;
    c.pool.backoff_base_ms = 100;
    c.pool.backoff_max_ms = 400;
    c.pool.reconcile_interval_ms = 50;
    c.timeouts.boot_timeout_secs = 20;
    c
}

/// A `kiln serve` process on a host-agent config; stopped with SIGTERM
/// (drain) when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
}

impl Daemon {
    /// Starts `kiln serve` with `config` and waits until it answers.
    pub fn start(config: &Config) -> Self {
        let config_path = config.state_dir.with_extension("toml");
        std::fs::write(
            &config_path,
            toml::to_string(config).expect("config as TOML"),
        )
        .expect("write config");
        let socket = config.socket_path();
        let child = Self::spawn(&config_path);
        let d = Daemon {
            child,
            socket,
            state_dir: config.state_dir.clone(),
            config_path,
        };
        d.wait_answering();
        d
    }

    /// A new daemon on the same config (after this one exited), once it
    /// answers.
    pub fn respawn(&self) -> Daemon {
        let d = Daemon {
            child: Self::spawn(&self.config_path),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            config_path: self.config_path.clone(),
        };
        d.wait_answering();
        d
    }

    /// Spawns `kiln serve --config path` without waiting.
    pub fn spawn(config_path: &Path) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .env("KILN_LOG", "info,kiln=debug")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kiln serve")
    }

    /// Waits until the socket answers a health check.
    pub fn wait_answering(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kiln serve did not answer on {}",
                self.socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to 30 s for the daemon to exit; returns its status and
    /// stderr.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kiln serve did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_processes_under(&self.state_dir);
    }
}

/// Kills every process whose command line mentions `dir` (host agents a
/// test left behind).
pub fn kill_processes_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for pid in pids_under(&needle) {
        // SAFETY: kill(2) with a pid read from /proc; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Pids of processes whose command line mentions `needle`.
pub fn pids_under(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let args: Vec<String> = c
                            .split(|b| *b == 0)
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect();
                        // The agents, not a daemon (whose config path
                        // also names the state dir).
                        args.iter().any(|a| a.starts_with(&format!("{needle}/")))
                            && !args.iter().any(|a| a == "serve")
                    })
                })
                .filter(|pid| {
                    // Not a zombie.
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map(|s| {
                            !s.rsplit(')')
                                .next()
                                .unwrap_or("")
                                .trim_start()
                                .starts_with('Z')
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A raw HTTP/1.1 exchange over the unix socket: (status, headers, body).
pub async fn http(
    socket: &Path,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    exchange(stream, method, uri, headers, body).await
}

/// A raw HTTP/1.1 exchange with the daemon's TCP listener.
pub async fn http_tcp(
    addr: std::net::SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(stream, method, uri, headers, body).await
}

/// One request on `stream`: (status, headers, body).
async fn exchange<S>(
    stream: S,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "kiln");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(
            req.body(Full::new(bytes::Bytes::from(body)))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The error code of a JSON error body.
pub fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

/// A loopback HTTP server for egress tests: answers each connection's
/// first request with `body(request head)` and closes; counts
/// connections. Returns its port.
pub async fn http_server(
    body: impl Fn(&[u8]) -> String + Send + Sync + 'static,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let body = body(&head);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, accepted)
}
