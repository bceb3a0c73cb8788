//! Whole HTTP requests through the daemon's router: the gate, route
//! matching, path and query extraction, JSON bodies and the handlers, over
//! an embedded core that can't boot anything (`kiln::fuzzing::HttpHarness`).
//!
//! Input: `[flags][method]\n[path and query]\n[authorization]\n[body...]`.
//! `flags` bit 0 sends from a TCP client instead of the unix socket; a path
//! that does not start with `/` gets `/v1/` in front so most inputs reach
//! real routes. Invariants: nothing panics; a TCP client (which cannot
//! forge a token) gets 401 or 403 and nothing else; every error response
//! is the daemon's JSON error body; nothing is a 500.
#![no_main]

use std::sync::OnceLock;

use kiln::fuzzing::{HttpHarness, Origin};
use libfuzzer_sys::fuzz_target;

fn harness() -> &'static HttpHarness {
    static H: OnceLock<HttpHarness> = OnceLock::new();
    H.get_or_init(HttpHarness::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == b'\n');
    let method = parts.next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let auth = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default().to_vec();
    let uri = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/v1/{path}")
    };
    let from = if flags & 1 == 1 {
        Origin::Tcp
    } else {
        Origin::Socket
    };
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    if !auth.is_empty() {
        headers.push(("authorization", auth));
    }
    let Some(answer) = harness().request(from, method, &uri, &headers, body) else {
        return;
    };
    let status = answer.status;
    assert_ne!(
        status,
        500,
        "{} {uri}: internal error {:?}",
        String::from_utf8_lossy(method),
        answer.body.as_deref().map(String::from_utf8_lossy)
    );
    if from == Origin::Tcp {
        assert!(
            status == 401 || status == 403,
            "a TCP client without a valid token got {status} for {uri}"
        );
    }
    if status >= 400 && method != b"HEAD" {
        let body = answer.body.expect("an error body ends");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("an error body is JSON");
        assert!(
            json["error"]["code"].is_string(),
            "error body without a code: {json}"
        );
    }
});
