//! What kiln's guest agent needs in an image root, added when missing:
//! the mount points it fills (`/proc`, `/sys`, `/dev`, `/run`, `/tmp`),
//! the sandbox user's home (`/home/sandbox`, uid/gid 1000, 0755) and that
//! user's `/etc/passwd` and `/etc/group` entries (so `id`, `whoami`, `ls
//! -l` and python's `getpass` name it). Existing entries are left alone:
//! the agent makes or re-owns what is still missing on its writable
//! overlay at boot.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::tree::Tree;
use super::OciBuildError;

/// The sandbox user (the guest agent's `SANDBOX_UID`).
const SANDBOX_UID: u32 = 1000;
/// Longest `/etc/passwd` or `/etc/group` read.
const MAX_ACCOUNTS_BYTES: u64 = 1 << 20;

/// Directories the agent mounts on or uses, with their modes and owners.
const DIRS: &[(&str, u32, u32)] = &[
    ("proc", 0o555, 0),
    ("sys", 0o555, 0),
    ("dev", 0o755, 0),
    ("run", 0o755, 0),
    ("tmp", 0o1777, 0),
    ("home/sandbox", 0o755, SANDBOX_UID),
];

/// Adds what the agent needs to `tree`.
pub(crate) fn add_sandbox_needs(tree: &Tree) -> Result<(), OciBuildError> {
    for (dir, mode, owner) in DIRS {
        let rel = Path::new(dir);
        let fail = |e: io::Error| OciBuildError::io("cannot add", tree.path().join(rel), e);
        if tree.find_dir(rel).map_err(fail)?.is_some() {
            continue;
        }
        let fd = tree.open_dir(rel).map_err(fail)?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(Uid::from_raw(*owner)),
            Some(Gid::from_raw(*owner)),
            AtFlags::EMPTY_PATH,
        )
        .and_then(|()| {
            // An O_PATH fd cannot be chmod'ed directly; through /proc it can.
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(*mode))
        })
        .map_err(|e| fail(e.into()))?;
    }
    add_account(
        tree,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n",
        &format!("sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:kiln sandbox:/home/sandbox:/bin/sh\n"),
    )?;
    add_account(
        tree,
        "etc/group",
        "root:x:0:\n",
        &format!("sandbox:x:{SANDBOX_UID}:\n"),
    )
}

/// Appends `line` to the account file `rel` unless an entry with the
/// sandbox id is there; creates the file (with `root_line` first) when
/// missing.
fn add_account(tree: &Tree, rel: &str, root_line: &str, line: &str) -> Result<(), OciBuildError> {
    let path = tree.path().join(rel);
    let fail = |e: io::Error| OciBuildError::io("cannot update", path.clone(), e);
    match tree.open_file(Path::new(rel), OFlags::RDWR | OFlags::APPEND) {
        Ok(mut file) => {
            let mut text = Vec::new();
            (&mut file)
                .take(MAX_ACCOUNTS_BYTES + 1)
                .read_to_end(&mut text)
                .map_err(fail)?;
            if text.len() as u64 > MAX_ACCOUNTS_BYTES {
                return Err(fail(io::Error::other("larger than 1 MiB")));
            }
            if has_id(&text, SANDBOX_UID) {
                return Ok(());
            }
            let sep = if text.is_empty() || text.ends_with(b"\n") {
                ""
            } else {
                "\n"
            };
            file.write_all(format!("{sep}{line}").as_bytes())
                .map_err(fail)
        }
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
            let dir = tree.open_dir(Path::new("etc")).map_err(fail)?;
            let name = Path::new(rel).file_name().unwrap_or_default();
            let fd = rustix::fs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| fail(e.into()))?;
            File::from(fd)
                .write_all(format!("{root_line}{line}").as_bytes())
                .map_err(fail)
        }
        Err(e) => Err(fail(e)),
    }
}

/// Whether an account file has an entry whose third field is `id`.
fn has_id(text: &[u8], id: u32) -> bool {
    let id = id.to_string();
    text.split(|&b| b == b'\n')
        .any(|line| line.split(|&b| b == b':').nth(2) == Some(id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_in_the_third_field() {
        assert!(has_id(
            b"root:x:0:0::/:/bin/sh\nu:x:1000:1000::/h:/bin/sh\n",
            1000
        ));
        assert!(!has_id(b"u1000:x:1001:1000::/h:/bin/sh\n", 1000));
        assert!(has_id(b"sandbox:x:1000:\n", 1000));
    }
}
