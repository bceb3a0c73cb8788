//! The agent's frame decoder on arbitrary bytes: reads messages until the
//! input is exhausted or an error; decoding never panics, and a message that
//! decodes re-encodes to a frame that decodes to the same message.
#![no_main]

use kiln_agent::protocol::{read_message, write_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    // Each successful read consumes at least a frame header: bounded loop.
    while let Ok(msg) = read_message(&mut input) {
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).expect("a decoded message encodes");
        let again = read_message(&mut buf.as_slice()).expect("re-encoded frame decodes");
        assert_eq!(again, msg);
    }
});
