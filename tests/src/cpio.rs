//! A minimal newc cpio writer, for tests that build broken or custom
//! initramfs images on the fly.

/// One regular file entry: path (no leading '/'), mode bits, contents.
pub struct Entry<'a> {
    /// Path inside the archive.
    pub path: &'a str,
    /// Full mode, e.g. `0o100755` for an executable file.
    pub mode: u32,
    /// File contents.
    pub data: &'a [u8],
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Encodes the entries followed by the trailer.
pub fn newc(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        header(&mut out, i as u32 + 1, e.mode, e.data.len(), e.path);
        out.extend_from_slice(e.data);
        pad4(&mut out);
    }
    header(&mut out, 0, 0, 0, "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_terminated() {
        let a = newc(&[Entry {
            path: "init",
            mode: 0o100755,
            data: b"#!/bin/sh\n",
        }]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
