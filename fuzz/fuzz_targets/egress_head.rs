//! What a guest program sends the egress proxy: a request head (CONNECT or
//! plain HTTP through the proxy). Parsing never panics; what it accepts
//! names a host that is a normalized DNS name or an IP literal, and the
//! head it would forward upstream is one complete HTTP/1.1 request with
//! exactly one Host header and no hop-by-hop headers, so a guest cannot
//! smuggle a second request or proxy credentials through it.
#![no_main]

use kiln::egress::request::{head_end, parse_head, Host, MAX_HEAD};
use kiln::egress::{policy::normalize_name, Allowlist};
use kiln::model::EgressSpec;
use libfuzzer_sys::fuzz_target;

fn allowlist() -> Allowlist {
    let spec = EgressSpec {
        allow: vec!["pypi.org".into(), "*.example.com".into()],
        cidrs: vec!["203.0.113.0/24".into()],
    };
    Allowlist::parse(&spec).expect("a valid allowlist")
}

fuzz_target!(|data: &[u8]| {
    let head = match head_end(data) {
        Some(end) => &data[..end],
        None => data,
    };
    let Ok(req) = parse_head(head) else {
        return;
    };
    assert!(head.len() <= MAX_HEAD);
    let list = allowlist();
    match &req.host {
        Host::Name(name) => {
            assert_eq!(normalize_name(name).as_deref(), Some(name.as_str()));
            let _ = list.allows_name(name);
        }
        Host::Ip(ip) => {
            let _ = list.allows_ip(*ip);
        }
    }
    let Some(forward) = req.forward else {
        return;
    };
    assert_eq!(head_end(&forward), Some(forward.len()), "one head, ending once");
    let mut headers = [httparse::EMPTY_HEADER; 80];
    let mut up = httparse::Request::new(&mut headers);
    match up.parse(&forward) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, forward.len()),
        other => panic!("the forwarded head does not parse: {other:?}"),
    }
    let count = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("host"), 1);
    assert_eq!(count("proxy-authorization"), 0);
    assert_eq!(count("connection"), 1);
    assert!(up.path.is_some_and(|p| p.starts_with('/')));
});
