//! What a hostile OCI image controls in `kiln template build --from-oci`:
//! the JSON documents (index, manifest, config, docker `manifest.json`)
//! and the layer blobs, which are decompressed (sniffed gzip/zstd/plain)
//! and applied to a scratch tree; no entry may land outside it.
//!
//! Input: `[selector: u8][bytes ...]`; selectors 0-3 parse the bytes as
//! one of the four documents, others apply them as a layer blob.
#![no_main]

use kiln::template_build::fuzzing::{apply_layer_blob, parse_document};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    if *selector < 4 {
        let _ = parse_document(*selector, bytes);
    } else {
        let _ = apply_layer_blob(bytes);
    }
});
