//! Packing the tree into a read-only, uncompressed erofs image (the guest
//! kernel has no EROFS compression) with `mkfs.erofs`. The same tree gives
//! the same bytes: the UUID comes from the image digest, and
//! `SOURCE_DATE_EPOCH` (the newest mtime of any layer entry) fixes the
//! build time while keeping every entry's own mtime (`--preserve-mtime`);
//! directories the builder made get that time too.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::digest::Digest;
use super::OciBuildError;

/// How often a running `mkfs.erofs` is polled.
const POLL: Duration = Duration::from_millis(50);
/// How much of `mkfs.erofs`'s error output a failure reports.
const MAX_STDERR: u64 = 4096;

/// A file removed when dropped, unless taken out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Packs `root` into `out` (replaced atomically), `scratch` holding the
/// tool's log; returns the image size.
pub(crate) fn erofs(
    root: &Path,
    out: &Path,
    scratch: &Path,
    digest: &Digest,
    epoch: i64,
    timeout: Duration,
) -> Result<u64, OciBuildError> {
    let name = out
        .file_name()
        .ok_or_else(|| OciBuildError::Pack(format!("{} is not a file path", out.display())))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let mut tmp = RemoveOnDrop(Some(out.with_file_name(tmp_name)));
    let tmp_path = tmp.0.clone().unwrap_or_default();
    let log_path = scratch.join("mkfs.log");
    let log =
        File::create(&log_path).map_err(|e| OciBuildError::io("cannot create", &log_path, e))?;
    let hex = digest.hex();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let mut child = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("--preserve-mtime")
        .arg(format!("-U{uuid}"))
        .arg(&tmp_path)
        .arg(root)
        .env("SOURCE_DATE_EPOCH", epoch.max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            OciBuildError::Pack(format!("cannot run mkfs.erofs (install erofs-utils): {e}"))
        })?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OciBuildError::Pack(format!("timed out after {timeout:?}")));
            }
            Err(e) => return Err(OciBuildError::Pack(format!("cannot wait for it: {e}"))),
        }
    };
    if !status.success() {
        return Err(OciBuildError::Pack(format!(
            "{status}: {}",
            tail(&log_path)
        )));
    }
    let bytes = fs::metadata(&tmp_path)
        .map_err(|e| OciBuildError::io("cannot stat", &tmp_path, e))?
        .len();
    fs::rename(&tmp_path, out)
        .map_err(|e| OciBuildError::io("cannot move the image to", out, e))?;
    tmp.0 = None;
    Ok(bytes)
}

/// The end of a log file, for an error message.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_STDERR)));
        let _ = f.take(MAX_STDERR).read_to_string(&mut text);
    }
    text.trim().to_owned()
}
