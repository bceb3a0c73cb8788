//! The client's NDJSON framing, sans I/O: body bytes go in, in any pieces;
//! lines come out, each at most a bound (a daemon cannot make the client
//! buffer without end).

use bytes::{Bytes, BytesMut};

use crate::{Error, Result};

/// Splits bytes into `\n`-terminated lines of at most `max_line` bytes.
/// After a line that is too long, it yields nothing more.
#[derive(Debug)]
pub struct LineSplitter {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_line: usize,
    failed: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
            failed: false,
        }
    }

    /// Adds the next bytes of the body.
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    fn too_long(&mut self) -> Option<Result<Bytes>> {
        self.failed = true;
        self.buf = BytesMut::new();
        self.scanned = 0;
        Some(Err(Error::TooLarge(format!(
            "an NDJSON line is longer than {} bytes",
            self.max_line
        ))))
    }

    /// The next complete line (without its `\n`); `None` when more bytes
    /// are needed (or after an error).
    pub fn next_line(&mut self) -> Option<Result<Bytes>> {
        if self.failed {
            return None;
        }
        match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if end > self.max_line {
                    return self.too_long();
                }
                let line = self.buf.split_to(end + 1).freeze();
                Some(Ok(line.slice(..end)))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_line {
                    return self.too_long();
                }
                None
            }
        }
    }

    /// At the end of the body: the last line when it had no `\n`.
    pub fn finish(&mut self) -> Option<Result<Bytes>> {
        if let Some(line) = self.next_line() {
            return Some(line);
        }
        if self.failed || self.buf.is_empty() {
            return None;
        }
        self.scanned = 0;
        Some(Ok(self.buf.split().freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&[u8]], max: usize) -> Vec<Result<Bytes>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p);
            while let Some(l) = s.next_line() {
                out.push(l);
            }
        }
        while let Some(l) = s.finish() {
            out.push(l);
        }
        out
    }

    fn ok(lines: Vec<Result<Bytes>>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l.expect("a line")).into_owned())
            .collect()
    }

    #[test]
    fn lines_in_any_pieces() {
        assert_eq!(
            ok(split(&[b"a\nbc", b"d\n", b"\ne"], 10)),
            ["a", "bcd", "", "e"]
        );
        assert_eq!(ok(split(&[b"x", b"y", b"\n"], 10)), ["xy"]);
        assert!(split(&[b""], 10).is_empty());
    }

    #[test]
    fn a_line_over_the_bound_ends_the_stream() {
        let out = split(&[b"12345", b"6\nnext\n"], 5);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Err(Error::TooLarge(_))));
        // Without a newline the bound holds too: nothing is kept.
        let mut s = LineSplitter::new(4);
        s.push(b"abcdefgh");
        assert!(matches!(s.next_line(), Some(Err(Error::TooLarge(_)))));
        s.push(b"more\n");
        assert!(s.next_line().is_none());
        assert!(s.finish().is_none());
        // Exactly at the bound is fine.
        assert_eq!(ok(split(&[b"1234\n"], 4)), ["1234"]);
    }
}
