//! One layer blob: checked against its digest, decompressed (gzip, zstd or
//! none), bounded, and applied to the tree entry by entry; the
//! uncompressed stream is checked against the config's `diff_id`.

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use super::digest::HashingReader;
use super::limits::MAX_LAYER_ENTRIES;
use super::resolve::{check_size, Compression, LayerRef};
use super::source::SourceDir;
use super::tarstream::{for_each_entry, TarError};
use super::tree::{LayerState, Tree};
use super::OciBuildError;

/// Largest zstd window accepted (memory a frame may make the decoder use).
const MAX_ZSTD_WINDOW: u64 = 128 << 20;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Applies layer `index` (`layer`) from `src` to `tree`; `budget` is the
/// number of uncompressed bytes still allowed, and is reduced.
pub(crate) fn apply_layer(
    tree: &mut Tree,
    src: &SourceDir,
    index: usize,
    layer: &LayerRef,
    budget: &mut u64,
) -> Result<(), OciBuildError> {
    let label = layer.label();
    let what = format!("layer {}", index + 1);
    let open = || {
        src.open_file(&layer.path)?
            .ok_or_else(|| OciBuildError::MissingBlob {
                name: label.clone(),
                what: what.clone(),
            })
    };
    if let Some(digest) = &layer.blob_digest {
        // Hashed before anything is unpacked: a tampered blob never
        // reaches the parsers.
        let (actual, bytes) = HashingReader::new(open()?)
            .finish()
            .map_err(|e| OciBuildError::io("cannot read", src.path().join(&layer.path), e))?;
        check_size(layer.size, bytes, &what, digest)?;
        digest.verify(&actual, &what)?;
    }
    let stream = decompress(BufReader::new(open()?), layer.compression)
        .map_err(|e| OciBuildError::layer(&label, format!("corrupt compressed stream: {e}")))?;
    let mut diff = HashingReader::new(Budget::new(stream, *budget));
    apply_tar(tree, &label, &mut diff)?;
    let (diff_id, bytes) = diff
        .finish()
        .map_err(|e| OciBuildError::layer(&label, format!("corrupt or truncated: {e}")))?;
    layer
        .diff_id
        .verify(&diff_id, &format!("{what} (uncompressed, diff_id)"))?;
    *budget = budget.saturating_sub(bytes);
    Ok(())
}

/// Applies the tar stream `tar` to `tree`.
pub(crate) fn apply_tar(tree: &mut Tree, label: &str, tar: impl Read) -> Result<(), OciBuildError> {
    let mut state = LayerState::default();
    for_each_entry(tar, MAX_LAYER_ENTRIES, |meta, body| {
        tree.apply(label, &mut state, &meta, body)
            .map_err(Step::Build)
    })
    .map_err(|e| match e {
        Step::Build(e) => e,
        Step::Tar(e) => OciBuildError::layer(label, e),
    })
}

/// An error applying a tar stream: the stream's or the caller's.
pub(crate) enum Step {
    /// The stream is malformed.
    Tar(TarError),
    /// Applying an entry failed.
    Build(OciBuildError),
}

impl From<TarError> for Step {
    fn from(e: TarError) -> Self {
        Self::Tar(e)
    }
}

/// The decompressed stream of `blob`.
pub(crate) fn decompress<'a, R: BufRead + 'a>(
    mut blob: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    let compression = match compression {
        Compression::Sniff => {
            let head = blob.fill_buf()?;
            if head.starts_with(GZIP_MAGIC) {
                Compression::Gzip
            } else if head.starts_with(ZSTD_MAGIC) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(Zstd {
            frame: None,
            source: Some(blob),
        }),
        Compression::None | Compression::Sniff => Box::new(blob),
    })
}

/// A zstd stream of one or more frames.
struct Zstd<R: BufRead> {
    frame: Option<StreamingDecoder<R, FrameDecoder>>,
    source: Option<R>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.source = self.frame.take().map(StreamingDecoder::into_inner);
            }
            let Some(mut source) = self.source.take() else {
                return Ok(0);
            };
            if source.fill_buf()?.is_empty() {
                self.source = Some(source);
                return Ok(0);
            }
            self.frame = Some(
                StreamingDecoder::new_with_max_window_size(source, MAX_ZSTD_WINDOW)
                    .map_err(io::Error::other)?,
            );
        }
    }
}

/// Fails a read past the allowed number of uncompressed bytes.
pub(crate) struct Budget<R> {
    inner: R,
    left: u64,
}

impl<R> Budget<R> {
    /// Allows `left` bytes from `inner`.
    pub(crate) fn new(inner: R, left: u64) -> Self {
        Self { inner, left }
    }
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("the image unpacks to more than the allowed size (OciBuildOptions::max_unpacked_bytes)")
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn roundtrip(compressed: Vec<u8>, how: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        decompress(&compressed[..], how)
            .expect("open")
            .read_to_end(&mut out)
            .expect("decode");
        out
    }

    #[test]
    fn gzip_members_and_sniffing() {
        let mut gz = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).expect("write");
            gz.extend(e.finish().expect("finish"));
        }
        assert_eq!(roundtrip(gz.clone(), Compression::Gzip), b"hello world");
        assert_eq!(roundtrip(gz, Compression::Sniff), b"hello world");
        assert_eq!(roundtrip(b"plain".to_vec(), Compression::Sniff), b"plain");
    }

    #[test]
    fn zstd_frames_decode_in_sequence() {
        let mut z = Vec::new();
        for part in [&b"one "[..], b"two"] {
            z.extend(ruzstd::encoding::compress_to_vec(
                part,
                ruzstd::encoding::CompressionLevel::Fastest,
            ));
        }
        assert_eq!(roundtrip(z.clone(), Compression::Zstd), b"one two");
        assert_eq!(roundtrip(z, Compression::Sniff), b"one two");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[7u8; 10000]).expect("write");
        let mut gz = e.finish().expect("finish");
        gz.truncate(gz.len() / 2);
        let mut out = Vec::new();
        let r = decompress(&gz[..], Compression::Gzip)
            .expect("open")
            .read_to_end(&mut out);
        assert!(r.is_err());
    }

    #[test]
    fn budget_stops_a_bomb() {
        let mut b = Budget::new(&[0u8; 100][..], 50);
        assert!(io::copy(&mut b, &mut io::sink()).is_err());
    }
}
