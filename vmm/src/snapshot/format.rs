//! The state file of a snapshot: checked before anything is built.
//!
//! ```text
//! KILN-VM-SNAPSHOT\n                                  magic line
//! {"format_version":2,"vmm_version":"0.1.0",
//!  "body_bytes":N,"body_sha256":"<hex>"}\n            header, one JSON line
//! <N bytes of JSON: the VmSnapshot>                   body
//! ```
//!
//! JSON rather than a binary encoding: serde_json is already a dependency,
//! the state is small (tens of KiB: registers, LAPIC and xsave pages,
//! queue positions; guest memory is its own file) and parses in about a
//! millisecond, and a snapshot can be inspected with `jq`. The header is
//! read first so a snapshot of another format or kiln-vmm version, or a
//! truncated or corrupted one, is refused before its body is parsed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{SnapshotError, VmSnapshot};

/// The first line of every state file.
pub const MAGIC: &[u8] = b"KILN-VM-SNAPSHOT\n";
/// The layout of [`VmSnapshot`] this build reads and writes.
///
/// 2: COM1's registers, xsave state beyond 4 KiB and the guest TSC
/// frequency; queue ring positions and the broken flag moved into each
/// device's shared state.
/// 3: a device's own state (vsock's next host port).
/// Older files are refused.
pub const FORMAT_VERSION: u32 = 3;
/// The kiln-vmm version written into (and required of) a snapshot: vCPU
/// and device state is only known to restore into the same build.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest state file read (a 32-vCPU VM's state is well under 2 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;
/// Largest header line.
const MAX_HEADER_BYTES: usize = 1024;

/// The header line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format_version: u32,
    vmm_version: String,
    body_bytes: u64,
    body_sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a state file for `snapshot`.
pub fn encode(snapshot: &VmSnapshot) -> Result<Vec<u8>, SnapshotError> {
    let body = serde_json::to_vec(snapshot).map_err(SnapshotError::Encode)?;
    let header = Header {
        format_version: FORMAT_VERSION,
        vmm_version: VMM_VERSION.to_owned(),
        body_bytes: body.len() as u64,
        body_sha256: hex(&Sha256::digest(&body)),
    };
    let mut out = MAGIC.to_vec();
    serde_json::to_writer(&mut out, &header).map_err(SnapshotError::Encode)?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses and checks a state file's bytes.
pub fn decode(bytes: &[u8]) -> Result<VmSnapshot, SnapshotError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(SnapshotError::NotASnapshot)?;
    let newline = rest
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or(SnapshotError::Corrupt("no header line"))?;
    let header: Header = serde_json::from_slice(&rest[..newline])
        .map_err(|_| SnapshotError::Corrupt("unreadable header"))?;
    if header.format_version != FORMAT_VERSION {
        return Err(SnapshotError::FormatVersion {
            found: header.format_version,
            expected: FORMAT_VERSION,
        });
    }
    if header.vmm_version != VMM_VERSION {
        return Err(SnapshotError::VmmVersion {
            found: header.vmm_version,
            expected: VMM_VERSION,
        });
    }
    let body = &rest[newline + 1..];
    if (body.len() as u64) < header.body_bytes {
        return Err(SnapshotError::Truncated {
            found: body.len() as u64,
            expected: header.body_bytes,
        });
    }
    if body.len() as u64 != header.body_bytes {
        return Err(SnapshotError::Corrupt("trailing bytes after the body"));
    }
    if hex(&Sha256::digest(body)) != header.body_sha256 {
        return Err(SnapshotError::Corrupt("checksum mismatch"));
    }
    tracing::debug!("step: snapshot state checksum verified");
    serde_json::from_slice(body).map_err(SnapshotError::Decode)
}

/// Replaces the contents of `file` (the state file at `path`) with
/// `snapshot` and syncs it.
pub fn write(file: &File, path: &Path, snapshot: &VmSnapshot) -> Result<u64, SnapshotError> {
    let bytes = encode(snapshot)?;
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.write_all_at(&bytes, 0).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(bytes.len() as u64)
}

/// Reads and checks the state file at `path`.
pub fn read(path: &Path) -> Result<VmSnapshot, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::Corrupt(
            "state file larger than any snapshot",
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    tracing::debug!("step: snapshot state file read ({} bytes)", bytes.len());
    decode(&bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn round_trip() {
        let snap = sample();
        let bytes = encode(&snap).unwrap();
        assert!(bytes.starts_with(MAGIC));
        let back = decode(&bytes).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&snap).unwrap()
        );
    }

    fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
        let rest = &bytes[MAGIC.len()..];
        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
        let mut header: Header = serde_json::from_slice(&rest[..nl]).unwrap();
        edit(&mut header);
        let mut out = MAGIC.to_vec();
        serde_json::to_writer(&mut out, &header).unwrap();
        out.extend_from_slice(&rest[nl..]);
        out
    }

    #[test]
    fn other_versions_are_refused() {
        let bytes = encode(&sample()).unwrap();
        let other = with_header(&bytes, |h| h.format_version = FORMAT_VERSION + 1);
        assert!(matches!(
            decode(&other),
            Err(SnapshotError::FormatVersion { found, .. }) if found == FORMAT_VERSION + 1
        ));
        let other = with_header(&bytes, |h| h.vmm_version = "0.0.0-other".into());
        let err = decode(&other).err().unwrap();
        assert!(matches!(err, SnapshotError::VmmVersion { .. }));
        assert!(err.to_string().contains("0.0.0-other"), "{err}");
    }

    #[test]
    fn older_format_snapshots_are_refused_by_name() {
        // A version 2 file of the same kiln-vmm version (the version string
        // did not change with the format).
        let bytes = encode(&sample()).unwrap();
        let old = with_header(&bytes, |h| h.format_version = 2);
        let err = decode(&old).err().unwrap();
        assert!(
            matches!(
                err,
                SnapshotError::FormatVersion {
                    found: 2,
                    expected: 3
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "snapshot format version 2, this kiln-vmm reads version 3: take the snapshot again"
        );
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused() {
        let bytes = encode(&sample()).unwrap();
        for cut in [0, 5, MAGIC.len() + 3, bytes.len() - 1, bytes.len() / 2] {
            let err = decode(&bytes[..cut]).err();
            assert!(err.is_some(), "cut at {cut} accepted");
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 10]),
            Err(SnapshotError::Truncated { .. })
        ));
        // One flipped byte in the body.
        let mut flipped = bytes.clone();
        let at = bytes.len() - 20;
        flipped[at] ^= 0x20;
        assert!(matches!(
            decode(&flipped),
            Err(SnapshotError::Corrupt("checksum mismatch"))
        ));
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(matches!(decode(&longer), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(
            decode(b"not a snapshot"),
            Err(SnapshotError::NotASnapshot)
        ));
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("kiln-snapfmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.state");
        let file = File::create(&path).unwrap();
        let n = write(&file, &path, &sample()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), n);
        read(&path).unwrap();
        std::fs::write(&path, b"KILN-VM-SNAPSHOT\n{").unwrap();
        assert!(read(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
