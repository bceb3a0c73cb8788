//! The token signing key: 32 random bytes in `<state dir>/token.key`,
//! made once (mode 0600, written to a temporary file and renamed, so a
//! crash leaves no half key) and loaded at every start, so tokens outlive
//! a daemon restart. A key file others can read is refused.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The key file's name in the state dir.
pub(crate) const KEY_FILE: &str = "token.key";

const KEY_LEN: usize = 32;

/// Why the key cannot be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// Reading or writing the file failed.
    #[error("token key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error("token key {path} has mode {mode:o}; it must be 0600 (chmod 600 it, or delete it to invalidate every token)")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 32 bytes.
    #[error("token key {0} is not {KEY_LEN} bytes")]
    Length(PathBuf),
    /// The system's random source failed.
    #[error("no randomness for the token key: {0}")]
    Random(getrandom::Error),
}

impl From<KeyError> for crate::Error {
    fn from(e: KeyError) -> Self {
        crate::Error::Internal(e.to_string())
    }
}

/// The HMAC key of sandbox tokens.
#[derive(Clone)]
pub(crate) struct TokenKey([u8; KEY_LEN]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key of given bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        TokenKey(bytes)
    }

    /// The key's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Loads `dir/token.key`, making it first if there is none. Call with
    /// the state dir's lock held (no two processes make it at once).
    pub(crate) fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let mode = file.metadata().map_err(io)?.mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Exposed { path, mode });
                }
                let mut bytes = Vec::with_capacity(KEY_LEN + 1);
                (&mut file)
                    .take(KEY_LEN as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io)?;
                let key: [u8; KEY_LEN] = bytes
                    .try_into()
                    .map_err(|_| KeyError::Length(path.clone()))?;
                Ok(TokenKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(e) => Err(io(e)),
        }
    }

    fn create(path: &Path) -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(KeyError::Random)?;
        let tmp = path.with_extension("key.tmp");
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&key).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        tracing::info!(path = %path.display(), "made a new token key");
        Ok(TokenKey(key))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-key-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn made_once_owner_only_and_loaded_again() {
        let d = dir("once");
        let first = TokenKey::load_or_create(&d).expect("create");
        let meta = std::fs::metadata(d.join(KEY_FILE)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let again = TokenKey::load_or_create(&d).expect("load");
        assert_eq!(first.bytes(), again.bytes());
        let other = TokenKey::load_or_create(&dir("other")).expect("another dir");
        assert_ne!(first.bytes(), other.bytes(), "keys are random");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn an_exposed_or_short_key_is_refused() {
        let d = dir("bad");
        TokenKey::load_or_create(&d).expect("create");
        let path = d.join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = TokenKey::load_or_create(&d).expect_err("0644");
        assert!(
            matches!(err, KeyError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(
            TokenKey::load_or_create(&d),
            Err(KeyError::Length(_))
        ));
        let _ = std::fs::remove_dir_all(d);
    }
}
