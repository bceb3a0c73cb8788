//! What reaches kiln-vmm's snapshot code from outside: a control-socket
//! request line, and a snapshot state file (refused unless intact).
//!
//! Input: `[selector: u8][bytes ...]`; an even selector parses the bytes
//! as a control request, an odd one decodes them as a state file.
#![no_main]

use kiln_vmm::snapshot::control::parse_request;
use kiln_vmm::snapshot::format::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let _ = parse_request(bytes);
    } else {
        let _ = decode(bytes);
    }
});
