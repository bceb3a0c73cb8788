//! A minimal i8042 keyboard controller: only the CPU reset command (0xFE on
//! the command port) matters. Kiln guests boot with `reboot=k`, so a guest
//! reboot ends here and becomes a clean VM exit.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;
use crate::vm::exit::{ExitReason, ExitState};

/// Turns the reset command into [`ExitReason::Reset`].
pub struct ResetTrigger(Arc<ExitState>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 at ports 0x60..=0x64 (offsets 0..=4).
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose reset stops the VM through `exit`.
    pub fn new(exit: Arc<ExitState>) -> Self {
        I8042 {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status 0: input buffer empty, no output pending.
        let value = self.inner.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            let Ok(()) = self.inner.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_clean_exit() {
        let exit = Arc::new(ExitState::new());
        let mut dev = I8042::new(Arc::clone(&exit));
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "input buffer empty");
        dev.write(0, &[0xfe]); // data port: ignored
        dev.write(4, &[0xfe, 0]); // wrong width: ignored
        dev.write(4, &[0xaa]); // another command: ignored
        assert!(!exit.stopping());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
