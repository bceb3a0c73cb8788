//! A scripted agent for the clients' unit tests.

use std::io::{self, Cursor, Read, Write};

use crate::protocol::{read_message, write_message, Message};

/// A fake connection: reads come from a scripted agent reply, writes are
/// recorded.
pub(crate) struct Scripted {
    reply: Cursor<Vec<u8>>,
    sent: Vec<u8>,
}

impl Scripted {
    /// Replies with `reply`, in order, then end of stream.
    pub(crate) fn new(reply: &[Message]) -> Self {
        let mut buf = Vec::new();
        for m in reply {
            write_message(&mut buf, m).expect("encode");
        }
        Self {
            reply: Cursor::new(buf),
            sent: Vec::new(),
        }
    }

    /// What the client sent.
    pub(crate) fn sent(&self) -> Vec<Message> {
        let mut r = Cursor::new(self.sent.clone());
        std::iter::from_fn(|| read_message(&mut r).ok()).collect()
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reply.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
