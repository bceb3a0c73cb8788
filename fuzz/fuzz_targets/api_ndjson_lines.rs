//! The client's NDJSON line splitter on arbitrary bytes in arbitrary
//! pieces: the first byte sets the line bound (0..=63), the second the
//! piece sizes. Lines never exceed the bound nor hold a newline; without
//! an error they give back exactly the input; after an error nothing
//! follows. Each line parses as an exec event or fails cleanly, and an
//! event that parses round-trips.
#![no_main]

use kiln::fuzzing::LineSplitter;
use kiln::model::ExecEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, step, input @ ..] = data else {
        return;
    };
    let max = usize::from(*max % 64);
    let step = usize::from(*step % 17) + 1;
    let mut splitter = LineSplitter::new(max);
    let mut lines = Vec::new();
    let mut failed = false;
    let mut take = |line: Option<kiln::Result<bytes::Bytes>>, lines: &mut Vec<Vec<u8>>| match line {
        Some(Ok(l)) => {
            assert!(!failed, "a line after an error");
            assert!(l.len() <= max, "a line over the bound");
            assert!(!l.contains(&b'\n'));
            if let Ok(event) = serde_json::from_slice::<ExecEvent>(&l) {
                let json = serde_json::to_vec(&event).expect("an event serializes");
                let again: ExecEvent = serde_json::from_slice(&json).expect("and parses back");
                assert_eq!(again, event);
            }
            lines.push(l.to_vec());
            true
        }
        Some(Err(_)) => {
            assert!(!failed, "a second error");
            failed = true;
            true
        }
        None => false,
    };
    for piece in input.chunks(step) {
        splitter.push(piece);
        while take(splitter.next_line(), &mut lines) {}
    }
    while take(splitter.finish(), &mut lines) {}
    if !failed {
        let mut joined = lines.join(&b'\n');
        if input.last() == Some(&b'\n') {
            joined.push(b'\n');
        }
        assert_eq!(joined, input, "the lines are the input");
    }
});
