//! The egress proxy end to end on the host: a real proxy on a unix socket
//! (where kiln-vmm would hand it the guest's connections), a loopback HTTP
//! server started here, and clients that speak to the proxy as the guest's
//! programs would.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::egress::{Allowlist, EgressEvent, EgressProxy, EgressSettings, EgressUsage, Verdict};
use kiln::model::EgressSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The body every request to the test server gets.
const BODY: &str = "hello from the loopback server";

/// A loopback HTTP server answering [`BODY`] (1000 times over for
/// `/big`); counts connections.
async fn http_server() -> (u16, Arc<AtomicUsize>) {
    common::http_server(|head| {
        if head.starts_with(b"GET /big ") {
            BODY.repeat(1000)
        } else {
            BODY.to_string()
        }
    })
    .await
}

struct Proxy {
    _proxy: EgressProxy,
    socket: std::path::PathBuf,
    events: Arc<Mutex<Vec<EgressEvent>>>,
}

fn settings(allow: &[&str], cidrs: &[&str], loopback_allowed: bool) -> EgressSettings {
    EgressSettings {
        allowlist: Allowlist::parse(&EgressSpec {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        })
        .expect("allowlist"),
        max_connections: 8,
        max_bytes: 1 << 20,
        used_before: 0,
        header_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        allow_private: if loopback_allowed {
            vec![
                "127.0.0.0/8".parse().expect("net"),
                "::1/128".parse().expect("net"),
            ]
        } else {
            Vec::new()
        },
    }
}

fn start(name: &str, settings: EgressSettings) -> Proxy {
    start_with_usage(name, settings, None)
}

fn start_with_usage(name: &str, settings: EgressSettings, usage: Option<EgressUsage>) -> Proxy {
    let socket = common::scratch(name).join("vsock.sock_1080");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let proxy = EgressProxy::start(
        &socket,
        settings,
        None,
        Arc::new(move |e| sink.lock().expect("events").push(e)),
        usage,
    )
    .expect("proxy");
    Proxy {
        _proxy: proxy,
        socket,
        events,
    }
}

impl Proxy {
    /// Sends `request` on a new connection and reads the whole answer.
    async fn ask(&self, request: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        read_all(&mut s).await
    }

    /// The events reported so far (waits a little for the last one: a
    /// connection reports after its answer went out).
    async fn events(&self, at_least: usize) -> Vec<EgressEvent> {
        for _ in 0..100 {
            if self.events.lock().expect("events").len() >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.events.lock().expect("events").clone()
    }
}

async fn read_all(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_allowed_name_gets_through_plain_http_and_connect() {
    let (port, _) = http_server().await;
    let p = start("egress-allowed", settings(&["localhost"], &[], true));
    let answer = p
        .ask(&format!(
            "GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ))
        .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(BODY), "{answer}");

    let mut s = UnixStream::connect(&p.socket).await.expect("connect");
    let connect = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    s.write_all(connect.as_bytes()).await.expect("write");
    let mut established = [0u8; 39];
    s.read_exact(&mut established).await.expect("200");
    assert_eq!(
        &established[..],
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("tunnelled request");
    let answer = read_all(&mut s).await;
    assert!(answer.ends_with(BODY), "{answer}");
    drop(s);

    let events = p.events(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(
            e.target.as_deref(),
            Some(format!("localhost:{port}").as_str())
        );
        match &e.verdict {
            Verdict::Allowed {
                addr,
                sent,
                received,
            } => {
                assert!(addr.ip().is_loopback(), "{addr}");
                assert!(*sent >= 30, "the request went up: {sent}");
                assert!(*received > BODY.len() as u64);
            }
            other => panic!("not allowed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_name_off_the_list_gets_403_and_no_connection() {
    let (port, accepted) = http_server().await;
    let p = start("egress-off-list", settings(&["*.example.com"], &[], true));
    let answer = p
        .ask(&format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
    assert!(
        answer.contains("localhost is not on the sandbox's egress allowlist"),
        "{answer}"
    );
    let answer = p
        .ask(&format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "IP literal without a CIDR: {answer}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let events = p.events(2).await;
    assert!(
        events
            .iter()
            .all(|e| matches!(e.verdict, Verdict::Denied(_))),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_name_resolving_to_an_inside_address_is_refused() {
    let (port, accepted) = http_server().await;
    // Listed, but localhost resolves to loopback and nothing allows that.
    let p = start(
        "egress-rebind",
        settings(&["localhost"], &["127.0.0.1/32"], false),
    );
    let answer = p
        .ask(&format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{answer}");
    assert!(answer.contains("a loopback address"), "{answer}");
    // A listed CIDR does not unlock an inside address either.
    let answer = p
        .ask(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.contains("127.0.0.1, a loopback address"), "{answer}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let events = p.events(2).await;
    assert!(matches!(&events[0].verdict, Verdict::Denied(r) if r.contains("loopback")));
}

#[tokio::test]
async fn an_ip_literal_in_a_listed_cidr_gets_through() {
    let (port, _) = http_server().await;
    let p = start("egress-cidr", settings(&[], &["127.0.0.0/24"], true));
    let answer = p
        .ask(&format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.ends_with(BODY), "{answer}");
}

#[tokio::test]
async fn malformed_and_oversized_heads_get_400() {
    let p = start("egress-400", settings(&["localhost"], &[], true));
    let answer = p.ask("GET https://localhost/ HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    let huge = format!("GET http://localhost/{} HTTP/1.1\r\n", "a".repeat(20_000));
    let mut s = UnixStream::connect(&p.socket).await.expect("connect");
    // The proxy may stop reading (and close) before all of it is written.
    let _ = s.write_all(huge.as_bytes()).await;
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("larger than"), "{answer}");
}

#[tokio::test]
async fn silent_clients_time_out_and_others_are_still_served() {
    let (port, _) = http_server().await;
    let mut s = settings(&["localhost"], &[], true);
    s.header_timeout = Duration::from_millis(800);
    let p = start("egress-silent", s);
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(UnixStream::connect(&p.socket).await.expect("connect"));
    }
    let answer = p
        .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(
        answer.ends_with(BODY),
        "served beside silent clients: {answer}"
    );
    for mut s in silent {
        let answer = read_all(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let events = p.events(6).await;
    let timeouts = events
        .iter()
        .filter(|e| matches!(&e.verdict, Verdict::Denied(r) if r.contains("no request head")))
        .count();
    assert_eq!(timeouts, 5, "{events:?}");
    // Their slots are free again.
    let answer = p
        .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.ends_with(BODY), "{answer}");
}

#[tokio::test]
async fn the_connection_cap_holds() {
    let (port, _) = http_server().await;
    let mut s = settings(&["localhost"], &[], true);
    s.max_connections = 2;
    let p = start("egress-cap", s);
    let a = UnixStream::connect(&p.socket).await.expect("a");
    let b = UnixStream::connect(&p.socket).await.expect("b");
    // Give the accept loop time to take both slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = p
        .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections (at most 2)"),
        "{answer}"
    );
    drop((a, b));
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = p
            .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
            .await;
        if answer.ends_with(BODY) {
            served = true;
            break;
        }
    }
    assert!(served, "a slot came free after the two closed");
}

#[tokio::test]
async fn the_byte_budget_holds() {
    let (port, _) = http_server().await;
    let mut s = settings(&["localhost"], &[], true);
    s.max_bytes = 4096;
    let p = start("egress-budget", s);
    let answer = p
        .ask(&format!("GET http://localhost:{port}/big HTTP/1.1\r\n\r\n"))
        .await;
    assert!(
        answer.len() < 4096 + 200,
        "cut short: {} bytes",
        answer.len()
    );
    let answer = p
        .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("budget"), "{answer}");
}

#[tokio::test]
async fn the_byte_budget_outlives_the_proxy() {
    let (port, _) = http_server().await;
    let totals = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&totals);
    let usage: EgressUsage = Arc::new(move |n| sink.lock().expect("totals").push(n));
    let p = start_with_usage(
        "egress-usage",
        settings(&["localhost"], &[], true),
        Some(usage),
    );
    for _ in 0..2 {
        let answer = p
            .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
            .await;
        assert!(answer.ends_with(BODY), "{answer}");
    }
    // The proxy reports once it has closed both sides: after the client
    // saw the end of the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while totals.lock().expect("totals").len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = totals.lock().expect("totals").clone();
    assert_eq!(seen.len(), 2, "one total per connection: {seen:?}");
    assert!(0 < seen[0] && seen[0] < seen[1], "growing totals: {seen:?}");
    drop(p);
    // The daemon restarted: the new proxy starts from what was spent.
    let mut s = settings(&["localhost"], &[], true);
    s.used_before = seen[1];
    s.max_bytes = seen[1];
    let p = start("egress-usage-again", s);
    let answer = p
        .ask(&format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"))
        .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("budget"), "{answer}");
}
