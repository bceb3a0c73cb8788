//! A process's output: a bounded ring of chunks with sequence numbers.
//!
//! Chunks are numbered from 1, one sequence across stdout and stderr. When
//! the bytes held go over the capacity the oldest chunks are evicted (the
//! newest chunk is always kept, so one chunk may exceed a tiny capacity).
//! A reader that asks for chunks after `after_seq` gets the evicted range
//! it missed as a [`Gap`], then what is still held.

use std::collections::VecDeque;

use kiln_agent::protocol::{Gap, OutputStream};

/// One read from a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the process's output (from 1).
    pub seq: u64,
    /// stdout or stderr.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The newest output of one process, at most about `capacity` bytes.
#[derive(Debug)]
pub struct OutputRing {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    capacity: usize,
    last_seq: u64,
}

impl OutputRing {
    /// An empty ring holding up to `capacity` bytes of output.
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
            last_seq: 0,
        }
    }

    /// Appends a chunk, evicting the oldest ones that no longer fit;
    /// returns its sequence number.
    pub fn push(&mut self, stream: OutputStream, data: Vec<u8>) -> u64 {
        self.last_seq += 1;
        self.bytes += data.len();
        self.chunks.push_back(Chunk {
            seq: self.last_seq,
            stream,
            data,
        });
        while self.bytes > self.capacity && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.data.len();
            }
        }
        self.last_seq
    }

    /// The newest sequence number produced (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The oldest sequence number still held (`last_seq + 1` when empty).
    pub fn first_seq(&self) -> u64 {
        self.chunks.front().map_or(self.last_seq + 1, |c| c.seq)
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The evicted chunks a reader positioned after `after_seq` missed.
    pub fn gap_after(&self, after_seq: u64) -> Option<Gap> {
        let first = self.first_seq();
        let wanted = after_seq.saturating_add(1);
        (wanted < first).then(|| Gap {
            first_seq: wanted,
            last_seq: first - 1,
        })
    }

    /// Copies of the held chunks after `after_seq`, oldest first, up to
    /// about `max_bytes` (at least one chunk when there is one).
    pub fn chunks_after(&self, after_seq: u64, max_bytes: usize) -> Vec<Chunk> {
        let first = self.first_seq();
        let skip = after_seq.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut taken = 0;
        for chunk in self.chunks.iter().skip(skip) {
            if !out.is_empty() && taken + chunk.data.len() > max_bytes {
                break;
            }
            taken += chunk.data.len();
            out.push(chunk.clone());
        }
        out
    }

    /// Whether appending `incoming` bytes would evict a chunk numbered
    /// `keep_from` or later (a reader that must not miss anything still
    /// needs it).
    pub fn would_evict(&self, incoming: usize, keep_from: u64) -> bool {
        let mut bytes = self.bytes + incoming;
        for chunk in &self.chunks {
            if bytes <= self.capacity {
                return false;
            }
            if chunk.seq >= keep_from {
                return true;
            }
            bytes -= chunk.data.len();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(capacity: usize, sizes: &[usize]) -> OutputRing {
        let mut ring = OutputRing::new(capacity);
        for (i, n) in sizes.iter().enumerate() {
            let stream = if i % 2 == 0 {
                OutputStream::Stdout
            } else {
                OutputStream::Stderr
            };
            ring.push(stream, vec![u8::try_from(i % 256).unwrap_or(0); *n]);
        }
        ring
    }

    fn seqs(chunks: &[Chunk]) -> Vec<u64> {
        chunks.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn one_sequence_across_both_streams() {
        let ring = ring_with(100, &[1, 2, 3]);
        let all = ring.chunks_after(0, usize::MAX);
        assert_eq!(seqs(&all), [1, 2, 3]);
        assert_eq!(all[1].stream, OutputStream::Stderr);
        assert_eq!(all[2].data, vec![2; 3]);
        assert_eq!((ring.first_seq(), ring.last_seq()), (1, 3));
        assert_eq!(ring.gap_after(0), None);
    }

    #[test]
    fn eviction_keeps_the_newest_within_capacity() {
        let ring = ring_with(10, &[4, 4, 4, 4]);
        assert_eq!(ring.bytes(), 8);
        assert_eq!((ring.first_seq(), ring.last_seq()), (3, 4));
        // A chunk bigger than the whole ring is still kept, alone.
        let ring = ring_with(10, &[4, 30]);
        assert_eq!(seqs(&ring.chunks_after(0, usize::MAX)), [2]);
        assert_eq!(ring.bytes(), 30);
    }

    #[test]
    fn gap_math() {
        let ring = ring_with(10, &[4, 4, 4, 4, 4]); // holds 4, 5
        assert_eq!(
            ring.gap_after(0),
            Some(Gap {
                first_seq: 1,
                last_seq: 3
            })
        );
        assert_eq!(
            ring.gap_after(2),
            Some(Gap {
                first_seq: 3,
                last_seq: 3
            })
        );
        assert_eq!(ring.gap_after(3), None);
        assert_eq!(ring.gap_after(5), None);
        assert_eq!(ring.gap_after(u64::MAX), None);
        // A reader after the gap gets the rest.
        assert_eq!(seqs(&ring.chunks_after(0, usize::MAX)), [4, 5]);
        assert_eq!(seqs(&ring.chunks_after(4, usize::MAX)), [5]);
        assert!(ring.chunks_after(5, usize::MAX).is_empty());
        assert!(ring.chunks_after(u64::MAX, usize::MAX).is_empty());
        // Empty chunks cost nothing and are evicted in order.
        let mut ring = ring_with(4, &[4]);
        ring.push(OutputStream::Stdout, Vec::new());
        ring.push(OutputStream::Stdout, vec![1; 4]);
        assert_eq!(ring.first_seq(), 2);
        assert_eq!(
            ring.gap_after(0),
            Some(Gap {
                first_seq: 1,
                last_seq: 1
            })
        );
        let empty = OutputRing::new(4);
        assert_eq!((empty.first_seq(), empty.last_seq()), (1, 0));
        assert_eq!(empty.gap_after(0), None);
    }

    #[test]
    fn batches_are_bounded_but_never_empty() {
        let ring = ring_with(100, &[10, 10, 10]);
        assert_eq!(seqs(&ring.chunks_after(0, 15)), [1]);
        assert_eq!(seqs(&ring.chunks_after(0, 20)), [1, 2]);
        assert_eq!(seqs(&ring.chunks_after(0, 1)), [1]);
    }

    #[test]
    fn would_evict_protects_unread_chunks() {
        let ring = ring_with(10, &[4, 4]); // 8 bytes held
        assert!(!ring.would_evict(2, 1), "fits without eviction");
        assert!(ring.would_evict(3, 1), "would evict seq 1");
        assert!(
            !ring.would_evict(3, 2),
            "seq 1 was read; evicting it is fine"
        );
        assert!(ring.would_evict(7, 2), "would evict seq 2 too");
        assert!(!ring.would_evict(100, 3), "everything was read");
    }
}
