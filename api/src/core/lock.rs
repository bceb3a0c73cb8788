//! One daemon per state directory: an exclusive lock on
//! `<state dir>/kiln.lock`, held for the daemon's life (the kernel drops it
//! when the process dies, even by SIGKILL).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::Error;

/// The held lock.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, Error> {
        let path = state_dir.join("kiln.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Internal(format!("opening {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Conflict(format!(
                    "another kiln daemon (pid {}) uses the state directory {}",
                    holder.trim(),
                    state_dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Internal(format!("locking {}: {e}", path.display())))
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record the daemon's pid in the lock file");
        }
        Ok(StateLock { _file: file })
    }
}

/// Whether a daemon holds `state_dir`'s lock now (a test: the lock is
/// taken and dropped at once when free).
pub fn daemon_holds(state_dir: &Path) -> bool {
    let Ok(file) = File::open(state_dir.join("kiln.lock")) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("kiln-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = StateLock::acquire(&dir).expect("first");
        let err = StateLock::acquire(&dir).expect_err("second");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(daemon_holds(&dir));
        drop(first);
        assert!(!daemon_holds(&dir));
        StateLock::acquire(&dir).expect("free again");
        let _ = std::fs::remove_dir_all(dir);
    }
}
