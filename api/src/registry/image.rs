//! Runtime images: telling erofs and ext4 apart by their superblock magic,
//! and copying one in under its content hash.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RegistryError;

/// Both superblocks start 1024 bytes into the device.
const SUPERBLOCK: u64 = 1024;
/// `EROFS_SUPER_MAGIC_V1`, little-endian, at the superblock's start.
const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();
/// `EXT4_SUPER_MAGIC` (ext2/3/4 share it), at superblock offset 0x38.
const EXT4_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
const EXT4_MAGIC_AT: usize = 0x38;

/// A file system the guest agent mounts as its root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Read-only erofs (what kiln's own builds make).
    Erofs,
    /// ext4 (mounted read-only).
    Ext4,
}

impl ImageFormat {
    /// The image file's extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Erofs => "erofs",
            ImageFormat::Ext4 => "ext4",
        }
    }
}

/// The format of the image at `path`, or why it is not one the guest
/// mounts.
pub fn detect(path: &Path) -> Result<ImageFormat, RegistryError> {
    let not_image = |reason: String| RegistryError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| not_image(format!("cannot open it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| not_image(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(not_image("it is not a regular file".into()));
    }
    let mut sb = [0u8; EXT4_MAGIC_AT + 2];
    file.seek(SeekFrom::Start(SUPERBLOCK))
        .and_then(|_| file.read_exact(&mut sb))
        .map_err(|_| {
            not_image(format!(
                "{} bytes is too short for an erofs or ext4 superblock",
                meta.len()
            ))
        })?;
    if sb[..4] == EROFS_MAGIC {
        Ok(ImageFormat::Erofs)
    } else if sb[EXT4_MAGIC_AT..] == EXT4_MAGIC {
        Ok(ImageFormat::Ext4)
    } else {
        Err(not_image(
            "no erofs or ext4 superblock at offset 1024 (build one with mkfs.erofs or mkfs.ext4)"
                .into(),
        ))
    }
}

/// An image copied into a template directory under a temporary name;
/// removed on drop unless [`Staged::commit`] renamed it into place.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: Option<PathBuf>,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size, bytes.
    pub bytes: u64,
    /// File system.
    pub format: ImageFormat,
}

/// Prefix of temporary files in a template directory.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Copies `src` into `dir` as a temporary file, hashing it on the way. A
/// failed write (a full disk) leaves nothing behind.
pub(crate) fn stage(src: &Path, dir: &Path) -> Result<Staged, RegistryError> {
    let format = detect(src)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let mut staged = Staged {
        tmp: Some(tmp.clone()),
        sha256: String::new(),
        bytes: 0,
        format,
    };
    let io = |what: String| move |source| RegistryError::Io { what, source };
    let mut input = File::open(src).map_err(io(format!("opening {}", src.display())))?;
    let mut out = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(io(format!("reading {}", src.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io(format!("writing {}", tmp.display())))?;
        staged.bytes += n as u64;
    }
    out.sync_all()
        .map_err(io(format!("writing {}", tmp.display())))?;
    staged.sha256 = hex(&hasher.finalize());
    Ok(staged)
}

impl Staged {
    /// The file name the image gets: its hash and format.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.sha256, self.format.extension())
    }

    /// Renames the copy to `dir/<file_name>` (the same bytes may already be
    /// there: then the copy is dropped).
    pub fn commit(mut self, dir: &Path) -> Result<String, RegistryError> {
        let name = self.file_name();
        if let Some(tmp) = self.tmp.take() {
            std::fs::rename(&tmp, dir.join(&name)).map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                RegistryError::Io {
                    what: format!("renaming {} into place", tmp.display()),
                    source,
                }
            })?;
        }
        Ok(name)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file with an erofs (or ext4) superblock magic and `fill` after it.
    pub(crate) fn fake_image(path: &Path, format: ImageFormat, fill: u8) {
        let mut bytes = vec![fill; 8192];
        match format {
            ImageFormat::Erofs => bytes[1024..1028].copy_from_slice(&EROFS_MAGIC),
            ImageFormat::Ext4 => bytes[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC),
        }
        std::fs::write(path, bytes).expect("fake image");
    }

    #[test]
    fn erofs_ext4_and_others() {
        let dir = crate::registry::tests::scratch("detect");
        let (erofs, ext4, junk, short) =
            (dir.join("a"), dir.join("b"), dir.join("c"), dir.join("d"));
        fake_image(&erofs, ImageFormat::Erofs, 0);
        fake_image(&ext4, ImageFormat::Ext4, 0);
        std::fs::write(&junk, vec![7u8; 8192]).expect("junk");
        std::fs::write(&short, b"tiny").expect("short");
        assert_eq!(detect(&erofs).expect("erofs"), ImageFormat::Erofs);
        assert_eq!(detect(&ext4).expect("ext4"), ImageFormat::Ext4);
        let e = detect(&junk).expect_err("junk").to_string();
        assert!(e.contains("no erofs or ext4 superblock"), "{e}");
        let e = detect(&short).expect_err("short").to_string();
        assert!(e.contains("too short"), "{e}");
        let e = detect(&dir).expect_err("a directory").to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = detect(&dir.join("none")).expect_err("missing").to_string();
        assert!(e.contains("cannot open"), "{e}");
    }

    #[test]
    fn a_dropped_stage_leaves_nothing() {
        let dir = crate::registry::tests::scratch("stage");
        let src = dir.join("src");
        fake_image(&src, ImageFormat::Erofs, 1);
        let out = dir.join("out");
        std::fs::create_dir(&out).expect("out");
        let staged = stage(&src, &out).expect("stage");
        assert_eq!(staged.bytes, 8192);
        assert_eq!(std::fs::read_dir(&out).expect("ls").count(), 1);
        drop(staged);
        assert_eq!(std::fs::read_dir(&out).expect("ls").count(), 0);
        let name = stage(&src, &out)
            .expect("stage")
            .commit(&out)
            .expect("commit");
        assert!(name.ends_with(".erofs") && name.len() == 64 + 6, "{name}");
        assert_eq!(
            std::fs::read(out.join(name)).expect("copy"),
            std::fs::read(&src).expect("src")
        );
    }
}
