//! The sans-IO message decoder on arbitrary bytes fed in arbitrary pieces:
//! it never panics, never consumes past a frame, gives the same messages
//! and the same first error however the input is split, agrees with the
//! blocking `read_message`, and every decoded message re-encodes to a
//! frame that decodes to the same message.
#![no_main]

use kiln_agent::protocol::{encode_to_vec, read_message, Message, MessageDecoder};
use libfuzzer_sys::fuzz_target;

/// Decodes `input` in pieces of `step` bytes; returns the messages and
/// whether decoding stopped on an error (its `Debug` text).
fn decode(input: &[u8], step: usize) -> (Vec<Message>, Option<String>) {
    let mut decoder = MessageDecoder::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            match decoder.feed(rest) {
                Ok((used, msg)) => {
                    assert!(used > 0 && used <= rest.len(), "feed used {used}");
                    rest = &rest[used..];
                    out.extend(msg);
                }
                Err(e) => return (out, Some(format!("{e:?}"))),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let (whole, whole_err) = decode(input, input.len());
    let (split, split_err) = decode(input, usize::from(step));
    assert_eq!(whole, split, "splitting changed the messages");
    assert_eq!(whole_err, split_err, "splitting changed the error");

    // The blocking adapter reads the same messages.
    let mut reader = input;
    for msg in &whole {
        let again = read_message(&mut reader).expect("blocking read agrees");
        assert_eq!(&again, msg);
    }

    for msg in whole {
        let frame = encode_to_vec(&msg).expect("a decoded message encodes");
        let (back, err) = decode(&frame, frame.len());
        assert_eq!(err, None);
        assert_eq!(back, [msg]);
    }
});
