//! `sha256:<hex>` digests and a reader that hashes what passes through it.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::OciBuildError;

/// A validated `sha256:<64 lowercase hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Digest(String);

impl Digest {
    /// Parses `s`, refusing other algorithms and malformed hex.
    pub(crate) fn parse(s: &str) -> Result<Self, OciBuildError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| OciBuildError::BadDigest(s.to_owned()))?;
        if !is_sha256_hex(hex) {
            return Err(OciBuildError::BadDigest(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex(&Sha256::digest(bytes))))
    }

    /// The 64 hex digits (the blob's file name in an OCI layout).
    pub(crate) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Fails unless `actual` is this digest.
    pub(crate) fn verify(&self, actual: &Digest, what: &str) -> Result<(), OciBuildError> {
        if self == actual {
            return Ok(());
        }
        Err(OciBuildError::DigestMismatch {
            what: what.to_owned(),
            name: self.0.clone(),
            actual: actual.0.clone(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the stream (so the digest covers all of it) and
    /// returns the digest and the byte count.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = Digest(format!("sha256:{}", hex(&self.hasher.finalize())));
        Ok((digest, self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).expect("valid").hex(), "a".repeat(64));
        for bad in [
            "sha512:aa",
            "sha256:",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:../{}", "a".repeat(61)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_covers_the_unread_rest() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        r.read_exact(&mut first).expect("read");
        let (digest, n) = r.finish().expect("finish");
        assert_eq!(n, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
        assert!(digest
            .verify(&Digest::of(b"other"), "blob")
            .is_err_and(|e| e.to_string().contains("digest mismatch for blob")));
    }
}
