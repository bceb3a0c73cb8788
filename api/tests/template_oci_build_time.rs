//! Build time of a template from a large OCI image (issue 13's
//! measurement), on demand:
//!
//! ```sh
//! KILN_OCI_BENCH_SOURCE=/path/to/layout-or-archive \
//!   cargo test -p kiln --test template_oci_build_time -- --ignored --nocapture
//! ```
//!
//! Prints the time, the unpacked and image sizes and the layer count; fails
//! when the build fails.

use std::time::Instant;

use kiln::template_build::{build_from_oci, OciBuildOptions};

#[test]
#[ignore = "a measurement: needs a large image in KILN_OCI_BENCH_SOURCE"]
fn build_time_of_a_large_image() {
    let source = std::env::var_os("KILN_OCI_BENCH_SOURCE")
        .expect("set KILN_OCI_BENCH_SOURCE to an OCI layout or docker save archive");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("image.erofs");
    let start = Instant::now();
    let image = build_from_oci(source.as_ref(), &out, &OciBuildOptions::default()).expect("build");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "built {} ({} layers, {:.1} MiB unpacked) into a {:.1} MiB erofs image in {secs:.1} s",
        image.digest,
        image.layers,
        image.unpacked_bytes as f64 / (1 << 20) as f64,
        image.image_bytes as f64 / (1 << 20) as f64,
    );
}
