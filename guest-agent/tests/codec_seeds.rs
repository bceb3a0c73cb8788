//! The fuzz seeds of the `agent_codec` target (`fuzz/seeds/agent_codec`)
//! still mean what they were written for: after their first byte (the
//! target's split step), the well-formed ones decode completely and the
//! broken ones fail the way their names say. A protocol change that
//! silently turns the seeds into noise fails here.

use std::path::Path;

use kiln_agent::protocol::{FrameError, Message, MessageDecoder, ProtocolError};

fn decode_all(input: &[u8]) -> (Vec<Message>, Result<(), ProtocolError>, bool) {
    let mut decoder = MessageDecoder::new();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        match decoder.feed(rest) {
            Ok((used, msg)) => {
                rest = &rest[used..];
                out.extend(msg);
            }
            Err(e) => return (out, Err(e), false),
        }
    }
    let idle = decoder.is_idle();
    (out, Ok(()), idle)
}

#[test]
fn seeds_decode_as_intended() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/agent_codec");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let data = std::fs::read(&path).expect("seed");
        let (msgs, result, idle) = decode_all(&data[1..]);
        match name.as_str() {
            "truncated" => {
                assert!(result.is_ok() && !idle && msgs.is_empty(), "{name}");
                assert!(matches!(
                    MessageDecoder::new().end_of_stream(),
                    ProtocolError::Frame(FrameError::Closed)
                ));
            }
            "oversized" => assert!(
                matches!(result, Err(ProtocolError::Frame(FrameError::TooLarge(_)))),
                "{name}: {result:?}"
            ),
            _ => {
                assert!(result.is_ok(), "{name}: {result:?}");
                assert!(idle, "{name}: ends mid-frame");
                assert!(!msgs.is_empty(), "{name}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds");
}
