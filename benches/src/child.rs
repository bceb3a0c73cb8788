//! A spawned VMM process that is always ended, by its own pid.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Owns a child process; kills (SIGKILL, by pid) and reaps it on drop unless
/// it already exited.
pub struct ChildGuard {
    child: Child,
    reaped: bool,
}

impl ChildGuard {
    /// Takes ownership of a spawned child.
    pub fn new(child: Child) -> Self {
        ChildGuard {
            child,
            reaped: false,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mutable access to the child (for its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits up to `timeout` for the child to exit; kills it when it does not.
    /// Returns the exit status, or `None` when it had to be killed.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill()?;
        self.child.wait()?;
        self.reaped = true;
        Ok(None)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
