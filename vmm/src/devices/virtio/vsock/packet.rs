//! The virtio-vsock packet: a 44-byte little-endian header, then `len`
//! payload bytes, spread over a descriptor chain the guest controls.
//!
//! Every length and address is checked against guest memory by
//! virtio-queue's `Reader`/`Writer`; lengths are bounded by
//! [`MAX_PKT_PAYLOAD`] before anything is copied.
//!
//! The module is public so the fuzz target can drive [`read_tx`].

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Writer};
use vm_memory::GuestMemoryMmap;

use super::{op, HDR_SIZE, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};

/// Errors from parsing or writing a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain points outside guest memory or is malformed.
    #[error("invalid descriptor chain")]
    Chain,
    /// Fewer bytes than a header.
    #[error("buffer of {0} bytes is shorter than a header")]
    TooShort(usize),
    /// `len` exceeds the packet size limit.
    #[error("payload length {0} exceeds the limit")]
    LenTooBig(u32),
    /// `len` exceeds the bytes the chain holds.
    #[error("payload length {len} exceeds the {available} bytes in the buffer")]
    Truncated {
        /// Claimed payload length.
        len: u32,
        /// Bytes present after the header.
        available: usize,
    },
    /// Not a stream packet.
    #[error("unsupported socket type {0}")]
    BadType(u16),
    /// Unknown operation.
    #[error("unknown operation {0}")]
    BadOp(u16),
    /// The source CID is not the guest's.
    #[error("source CID {0} is not the guest's")]
    WrongSrcCid(u64),
    /// The destination CID is not the host's.
    #[error("destination CID {0} is not the host's")]
    WrongDstCid(u64),
    /// Copying to or from guest memory failed midway.
    #[error("guest memory access failed")]
    Memory,
}

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VsockHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN flags).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        VsockHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a guest packet's addressing, type and operation.
    pub fn validate(&self, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSrcCid(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::BadOp(self.op));
        }
        Ok(())
    }

    /// A header answering `self` (ports and CIDs swapped) with `op`.
    pub fn reply(&self, op: u16) -> Self {
        VsockHeader {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }
}

/// Reads a guest TX packet: returns its header and copies its payload into
/// `payload` (which must hold [`MAX_PKT_PAYLOAD`] bytes); the payload is
/// `&payload[..hdr.len]`.
pub fn read_tx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    payload: &mut [u8],
) -> Result<VsockHeader, PacketError> {
    let mut reader = chain.reader(mem).map_err(|_| PacketError::Chain)?;
    let total = reader.available_bytes();
    if total < HDR_SIZE {
        return Err(PacketError::TooShort(total));
    }
    let mut raw = [0u8; HDR_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::Memory)?;
    let hdr = VsockHeader::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD || len > payload.len() {
        return Err(PacketError::LenTooBig(hdr.len));
    }
    let available = total - HDR_SIZE;
    if len > available {
        return Err(PacketError::Truncated {
            len: hdr.len,
            available,
        });
    }
    reader
        .read_exact(&mut payload[..len])
        .map_err(|_| PacketError::Memory)?;
    Ok(hdr)
}

/// A guest RX buffer: a device-writable chain with room for at least a header.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Checks the chain's writable part against guest memory.
    pub fn new(
        chain: DescriptorChain<&'a GuestMemoryMmap>,
        mem: &'a GuestMemoryMmap,
    ) -> Result<Self, PacketError> {
        let writer = chain.writer(mem).map_err(|_| PacketError::Chain)?;
        let n = writer.available_bytes();
        if n < HDR_SIZE {
            return Err(PacketError::TooShort(n));
        }
        Ok(RxBuffer { writer })
    }

    /// Most payload bytes a packet in this buffer can carry.
    pub fn payload_capacity(&self) -> usize {
        (self.writer.available_bytes() - HDR_SIZE).min(MAX_PKT_PAYLOAD)
    }

    /// Writes `hdr` (with `len` set to the payload's length) and `payload`;
    /// returns the bytes written. Payload beyond the capacity is an error.
    pub fn write(mut self, hdr: &VsockHeader, payload: &[u8]) -> Result<u32, PacketError> {
        if payload.len() > self.payload_capacity() {
            return Err(PacketError::LenTooBig(payload.len() as u32));
        }
        let mut hdr = *hdr;
        hdr.len = payload.len() as u32;
        self.writer
            .write_all(&hdr.to_bytes())
            .and_then(|()| self.writer.write_all(payload))
            .map_err(|_| PacketError::Memory)?;
        Ok((HDR_SIZE + payload.len()) as u32)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::pop_chain;
    use crate::devices::virtio::test_utils::{guest_memory, TestQueue};

    const BUF: u64 = 0x10_0000;

    fn hdr(len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    /// Publishes `bytes` split over descriptors of `split` bytes, then parses it.
    fn parse(bytes: &[u8], descs: &[(u64, u32)]) -> Result<(VsockHeader, Vec<u8>), PacketError> {
        let mem = guest_memory();
        mem.write_slice(bytes, GuestAddress(BUF)).unwrap();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        let bufs: Vec<_> = descs.iter().map(|&(a, l)| (a, l, false)).collect();
        tq.add_chain(&mem, &bufs);
        let mut q = tq.queue();
        let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
        let mut payload = vec![0u8; MAX_PKT_PAYLOAD];
        read_tx(chain, &mem, &mut payload).map(|h| (h, payload[..h.len as usize].to_vec()))
    }

    #[test]
    fn header_round_trip() {
        let h = hdr(5);
        assert_eq!(VsockHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[24], 5);
    }

    #[test]
    fn parses_header_and_payload_across_descriptors() {
        let mut bytes = hdr(5).to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        // Header split mid-field, payload in a third descriptor.
        let (h, p) = parse(&bytes, &[(BUF, 10), (BUF + 10, 34), (BUF + 44, 5)]).unwrap();
        assert_eq!(h, hdr(5));
        assert_eq!(p, b"hello");
    }

    #[test]
    fn truncated_header() {
        let bytes = hdr(0).to_bytes();
        assert_eq!(parse(&bytes, &[(BUF, 43)]), Err(PacketError::TooShort(43)));
        assert_eq!(parse(&bytes, &[(BUF, 0)]), Err(PacketError::TooShort(0)));
    }

    #[test]
    fn len_larger_than_buffer() {
        let mut bytes = hdr(100).to_bytes().to_vec();
        bytes.extend_from_slice(&[0; 10]);
        assert_eq!(
            parse(&bytes, &[(BUF, 54)]),
            Err(PacketError::Truncated {
                len: 100,
                available: 10
            })
        );
    }

    #[test]
    fn len_larger_than_max_packet() {
        let bytes = hdr(MAX_PKT_PAYLOAD as u32 + 1).to_bytes();
        // Even when the chain really is that long.
        assert_eq!(
            parse(&bytes, &[(BUF, 44 + MAX_PKT_PAYLOAD as u32 + 1)]),
            Err(PacketError::LenTooBig(MAX_PKT_PAYLOAD as u32 + 1))
        );
        let bytes = hdr(u32::MAX).to_bytes();
        assert_eq!(
            parse(&bytes, &[(BUF, 44)]),
            Err(PacketError::LenTooBig(u32::MAX))
        );
    }

    #[test]
    fn chain_outside_guest_memory() {
        let bytes = hdr(0).to_bytes();
        assert_eq!(
            parse(&bytes, &[(0x1_0000_0000, 44)]),
            Err(PacketError::Chain)
        );
        // Straddling the end of guest memory.
        assert_eq!(
            parse(&bytes, &[((16 << 20) - 20, 44)]),
            Err(PacketError::Chain)
        );
    }

    #[test]
    fn validate_rejects_bad_addressing_type_and_op() {
        assert_eq!(hdr(0).validate(3), Ok(()));
        assert_eq!(hdr(0).validate(4), Err(PacketError::WrongSrcCid(3)));
        let h = VsockHeader {
            dst_cid: 1,
            ..hdr(0)
        };
        assert_eq!(h.validate(3), Err(PacketError::WrongDstCid(1)));
        let h = VsockHeader {
            dst_cid: 3,
            ..hdr(0)
        };
        assert_eq!(h.validate(3), Err(PacketError::WrongDstCid(3)));
        let h = VsockHeader { type_: 2, ..hdr(0) };
        assert_eq!(h.validate(3), Err(PacketError::BadType(2)));
        for bad in [0, 8, u16::MAX] {
            let h = VsockHeader { op: bad, ..hdr(0) };
            assert_eq!(h.validate(3), Err(PacketError::BadOp(bad)));
        }
    }

    #[test]
    fn rx_buffer_bounds() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        tq.add_chain(&mem, &[(BUF, 43, true)]);
        tq.add_chain(&mem, &[(BUF, 20, true), (BUF + 20, 40, true)]);
        tq.add_chain(&mem, &[(BUF, 44, false)]);
        let mut q = tq.queue();
        let c = pop_chain(&mut q, &mem).unwrap().unwrap();
        assert_eq!(
            RxBuffer::new(c, &mem).err(),
            Some(PacketError::TooShort(43))
        );
        let c = pop_chain(&mut q, &mem).unwrap().unwrap();
        let rx = RxBuffer::new(c, &mem).unwrap();
        assert_eq!(rx.payload_capacity(), 16);
        let h = hdr(999);
        assert_eq!(rx.write(&h, b"0123456789").unwrap(), 54);
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(BUF)).unwrap();
        assert_eq!(VsockHeader::from_bytes(&raw).len, 10);
        // Read-only buffers can't receive.
        let c = pop_chain(&mut q, &mem).unwrap().unwrap();
        assert_eq!(RxBuffer::new(c, &mem).err(), Some(PacketError::TooShort(0)));
        // Over-capacity payloads are refused.
        tq.add_chain(&mem, &[(BUF, 50, true)]);
        let c = pop_chain(&mut q, &mem).unwrap().unwrap();
        let rx = RxBuffer::new(c, &mem).unwrap();
        assert_eq!(rx.write(&h, &[0; 7]), Err(PacketError::LenTooBig(7)));
    }
}
