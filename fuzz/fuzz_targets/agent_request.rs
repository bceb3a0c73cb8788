//! The guest agent's request handling up to the first system call: the
//! decoder, then the checks every file and exec request passes before the
//! agent touches the file system or spawns anything.
//!
//! The agent's modules live in its binary, so the two pure ones are
//! compiled here from their files as they are: `files/path.rs` (path
//! bounds, anchoring at the sandbox home, the parent / final-name split)
//! and `process/validate.rs` (argv, env, cwd). Everything after them runs
//! as the sandbox user inside an `openat2(RESOLVE_IN_ROOT)` root or spawns
//! a process, which a fuzzer cannot do safely.
//!
//! Input: a byte stream as the host would send it. Invariants: a path that
//! passes is absolute, NUL-free and bounded, and its split reassembles it;
//! an exec request that passes has a program and C-string-safe strings.
#![no_main]

use kiln_agent::protocol::files::{MAX_NAME, MAX_PATH};
use kiln_agent::protocol::{ExecRequest, Message, MessageDecoder};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // the agent uses more of it than the checks
#[path = "../../guest-agent/src/agent/files/path.rs"]
mod path;
#[path = "../../guest-agent/src/agent/process/validate.rs"]
mod validate;

/// The agent's `SANDBOX_HOME`, where relative paths start.
const HOME: &str = "/home/sandbox";

/// Runs the agent's path check on `p` and asserts what a passing path means.
fn check_path(p: &str) {
    let Ok(req) = path::ReqPath::parse(p, HOME) else {
        return;
    };
    assert!(!p.is_empty() && p.len() <= MAX_PATH && !p.contains('\0'));
    assert!(p.split('/').all(|c| c.len() <= MAX_NAME));
    let full = req.full().to_str().expect("a &str stays UTF-8");
    assert!(full.starts_with('/'), "{full:?} is not absolute");
    assert!(full.len() <= MAX_PATH + HOME.len() + 1);
    if !p.starts_with('/') {
        assert!(full.starts_with(HOME), "{p:?} -> {full:?} left home");
    }
    match req.split() {
        Ok((parent, name)) => {
            let parent = parent.to_str().expect("UTF-8");
            let name = name.to_str().expect("UTF-8");
            assert!(!name.is_empty() && name != "." && name != "..");
            assert!(!name.contains('/'), "name {name:?}");
            assert!(parent.starts_with('/'), "parent {parent:?}");
            // `parent` is what precedes the last `/name` ("/" when nothing does).
            let trimmed = full.trim_end_matches('/');
            let prefix = trimmed
                .strip_suffix(name)
                .and_then(|p| p.strip_suffix('/'))
                .unwrap_or_else(|| panic!("{full:?} does not end in /{name}"));
            assert!(
                prefix == parent || (prefix.is_empty() && parent == "/"),
                "split of {full:?}: {parent:?} + {name:?}"
            );
        }
        Err(e) => assert_eq!(e, path::PathError::NoName),
    }
}

/// Runs the agent's exec check on `req` and asserts what passing means.
fn check_exec(req: &ExecRequest) {
    if validate::validate(req).is_err() {
        return;
    }
    assert!(!req.argv.is_empty());
    assert!(req.argv.iter().all(|a| !a.contains('\0')));
    for (k, v) in &req.env {
        assert!(!k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
    }
    assert!(req.cwd.as_deref().is_none_or(|c| !c.contains('\0')));
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = MessageDecoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((used, msg)) = decoder.feed(rest) else {
            return;
        };
        rest = &rest[used..];
        let Some(msg) = msg else { continue };
        match &msg {
            Message::Exec(req) | Message::Start(req) => check_exec(req),
            Message::FileWrite(r) => check_path(&r.path),
            Message::FileRead(r) => check_path(&r.path),
            Message::ListDir(r) => check_path(&r.path),
            Message::Stat(r) => check_path(&r.path),
            Message::Remove(r) => check_path(&r.path),
            Message::Mkdir(r) => check_path(&r.path),
            Message::Rename(r) => {
                check_path(&r.from);
                check_path(&r.to);
            }
            _ => {}
        }
    }
});
