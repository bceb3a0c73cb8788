//! One registry writer at a time: an exclusive flock on
//! `<state>/templates/.lock` (dropped by the kernel if the holder dies).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use super::RegistryError;

/// How long a writer waits for another (a swap takes milliseconds; this
/// covers a slow disk).
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// The held lock.
#[derive(Debug)]
pub(crate) struct RegistryLock {
    _file: File,
}

impl RegistryLock {
    /// Takes the lock of the registry at `root` (made if missing), waiting
    /// up to a minute.
    pub fn acquire(root: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(root).map_err(|source| RegistryError::Io {
            what: format!("creating {}", root.display()),
            source,
        })?;
        let path = root.join(".lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| RegistryError::Io {
                what: format!("opening {}", path.display()),
                source,
            })?;
        let until = Instant::now() + WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RegistryLock { _file: file }),
                Err(TryLockError::WouldBlock) if Instant::now() < until => std::thread::sleep(POLL),
                Err(TryLockError::WouldBlock) => return Err(RegistryError::Busy(root.into())),
                Err(TryLockError::Error(source)) => {
                    return Err(RegistryError::Io {
                        what: format!("locking {}", path.display()),
                        source,
                    })
                }
            }
        }
    }
}
