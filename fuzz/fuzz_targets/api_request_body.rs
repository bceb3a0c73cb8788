//! What a client sends the daemon, checked as the daemon checks it: the
//! first byte picks a JSON request body (sandbox spec, patch, exec spec,
//! signal, pool update, mkdir, rename) or the sandbox list query, the rest
//! is the body. Parsing and checking never panic; bodies that parse
//! round-trip through JSON; a signal that passes is 1..=64.
#![no_main]

use kiln::fuzzing::{check_body, check_list_query, BODIES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    if usize::from(*kind) % (BODIES.len() + 1) == BODIES.len() {
        if let Ok(query) = std::str::from_utf8(body) {
            let _ = check_list_query(query);
        }
        return;
    }
    let _ = check_body(*kind, body);
});
