//! A virtio-blk request parsed from a descriptor chain the guest controls,
//! and its execution against a [`Disk`].
//!
//! Layout: the first descriptor is device-readable and starts with the
//! 16-byte header `{le32 type, le32 reserved, le64 sector}`; the last
//! descriptor is device-writable and its last byte is the status. Bytes
//! between them (including the rest of the header descriptor and the rest of
//! the status descriptor) are the data, in order, all in the direction the
//! type needs: device-writable for IN and GET_ID, device-readable for OUT,
//! none for FLUSH.
//!
//! Nothing is read from or written to guest memory, nor to the disk, before
//! every buffer was checked against guest memory and the request against the
//! disk size. When the chain has no usable status byte the parser says so
//! and the device must answer without touching guest memory.
//!
//! The module is public so the fuzz target can drive [`parse`].

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    req_type, status, Disk, BOUNCE_SIZE, HDR_SIZE, ID_BYTES, MAX_DESCRIPTORS, SECTOR_SIZE,
};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain yielded no descriptor.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The chain has more than [`MAX_DESCRIPTORS`] descriptors.
    #[error("descriptor chain longer than {MAX_DESCRIPTORS}")]
    TooManyDescriptors,
    /// The last descriptor is empty or not device-writable.
    #[error("last descriptor is not a device-writable status byte")]
    StatusNotWritable,
    /// The status byte is outside guest memory.
    #[error("status byte is outside guest memory")]
    StatusOutOfMemory,
    /// The header descriptor is shorter than a header.
    #[error("header descriptor of {0} bytes is shorter than {HDR_SIZE}")]
    HeaderTooShort(u32),
    /// The header descriptor is device-writable.
    #[error("header descriptor is not device-readable")]
    HeaderNotReadable,
    /// A buffer lies outside guest memory.
    #[error("buffer at {addr:#x} (+{len}) is outside guest memory")]
    BadAddress {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A data buffer's direction does not match the request type.
    #[error("data buffer direction is wrong for the request type")]
    WrongDirection,
    /// FLUSH came with data buffers.
    #[error("flush request carries {0} data bytes")]
    UnexpectedData(u64),
    /// The request type is unknown or not offered.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The data length of IN/OUT is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    NotSectorMultiple(u64),
    /// The request reaches past the end of the disk (or overflows).
    #[error("sector {sector} + {len} bytes is beyond the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
    },
    /// GET_ID with room for fewer than [`ID_BYTES`] bytes.
    #[error("GET_ID buffer of {0} bytes is shorter than {ID_BYTES}")]
    IdBufferTooSmall(u64),
    /// OUT on a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// The host file failed.
    #[error("disk I/O failed: {0}")]
    Io(#[source] io::Error),
    /// Copying to or from guest memory failed.
    #[error("guest memory access failed")]
    Memory,
}

impl RequestError {
    /// The status byte that answers this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// A request that cannot be served.
#[derive(Debug)]
pub struct Refused {
    /// Where the error status goes; `None` when the chain has no usable
    /// status byte (the chain is returned with nothing written).
    pub status: Option<GuestAddress>,
    /// Why.
    pub error: RequestError,
}

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest.
    In,
    /// Write guest data to sectors.
    Out,
    /// Make writes durable.
    Flush,
    /// Read the device id string.
    GetId,
}

/// One data buffer in guest memory (checked to lie in guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// A validated request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (IN/OUT).
    pub sector: u64,
    /// Data buffers, in order.
    pub segments: Vec<Segment>,
    /// Total bytes in `segments`.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Parses and validates the request in `chain` for a disk of
/// `disk_sectors` sectors.
pub fn parse(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    disk_sectors: u64,
) -> Result<Request, Refused> {
    let descs: Vec<Descriptor> = chain.take(MAX_DESCRIPTORS + 1).collect();
    parse_descriptors(&descs, mem, disk_sectors)
}

fn parse_descriptors(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    disk_sectors: u64,
) -> Result<Request, Refused> {
    let no_status = |error| Refused {
        status: None,
        error,
    };
    if descs.len() > MAX_DESCRIPTORS {
        return Err(no_status(RequestError::TooManyDescriptors));
    }
    let (last, rest) = descs
        .split_last()
        .ok_or(no_status(RequestError::EmptyChain))?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(no_status(RequestError::StatusNotWritable));
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len() - 1))
        .filter(|&a| GuestMemoryBackend::check_range(mem, a, 1))
        .ok_or(no_status(RequestError::StatusOutOfMemory))?;
    let refuse = |error| Refused {
        status: Some(status),
        error,
    };

    let Some((first, middle)) = rest.split_first() else {
        return Err(refuse(RequestError::HeaderTooShort(0)));
    };
    if first.is_write_only() {
        return Err(refuse(RequestError::HeaderNotReadable));
    }
    if (first.len() as usize) < HDR_SIZE {
        return Err(refuse(RequestError::HeaderTooShort(first.len())));
    }
    let mut hdr = [0u8; HDR_SIZE];
    mem.read_slice(&mut hdr, first.addr()).map_err(|_| {
        refuse(RequestError::BadAddress {
            addr: first.addr().0,
            len: HDR_SIZE as u64,
        })
    })?;
    let raw_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let kind = match raw_type {
        req_type::IN => RequestType::In,
        req_type::OUT => RequestType::Out,
        req_type::FLUSH => RequestType::Flush,
        req_type::GET_ID => RequestType::GetId,
        t => return Err(refuse(RequestError::Unsupported(t))),
    };
    let want_writable = matches!(kind, RequestType::In | RequestType::GetId);

    // The data: what follows the header in its descriptor, the middle
    // descriptors, and what precedes the status byte in its descriptor.
    let head_rest = (
        first.addr().0.wrapping_add(HDR_SIZE as u64),
        first.len() - HDR_SIZE as u32,
        false,
    );
    let tail_rest = (last.addr().0, last.len() - 1, true);
    let pieces = std::iter::once(head_rest)
        .chain(
            middle
                .iter()
                .map(|d| (d.addr().0, d.len(), d.is_write_only())),
        )
        .chain(std::iter::once(tail_rest));
    let mut segments = Vec::new();
    let mut data_len = 0u64;
    for (addr, len, writable) in pieces {
        if len == 0 {
            continue;
        }
        // FLUSH takes no data in either direction; refused below.
        if kind != RequestType::Flush && writable != want_writable {
            return Err(refuse(RequestError::WrongDirection));
        }
        let in_memory = GuestAddress(addr).checked_add(u64::from(len)).is_some()
            && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
        if !in_memory {
            return Err(refuse(RequestError::BadAddress {
                addr,
                len: u64::from(len),
            }));
        }
        segments.push(Segment {
            addr: GuestAddress(addr),
            len,
        });
        data_len += u64::from(len);
    }

    match kind {
        RequestType::In | RequestType::Out => {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(refuse(RequestError::NotSectorMultiple(data_len)));
            }
            let end = sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(data_len));
            let size = disk_sectors.saturating_mul(SECTOR_SIZE);
            if end.is_none_or(|end| end > size) {
                return Err(refuse(RequestError::OutOfRange {
                    sector,
                    len: data_len,
                }));
            }
        }
        RequestType::Flush if data_len != 0 => {
            return Err(refuse(RequestError::UnexpectedData(data_len)));
        }
        RequestType::GetId if data_len < ID_BYTES as u64 => {
            return Err(refuse(RequestError::IdBufferTooSmall(data_len)));
        }
        _ => {}
    }
    Ok(Request {
        kind,
        sector,
        segments,
        data_len,
        status,
    })
}

impl Request {
    /// Runs the request against `disk`, moving data through `bounce`;
    /// `write_through` makes every OUT durable before it completes (for
    /// drivers that did not negotiate FLUSH). Returns the bytes written into
    /// the guest's data buffers (the status byte not counted).
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        bounce: &mut [u8; BOUNCE_SIZE],
        write_through: bool,
    ) -> Result<u32, RequestError> {
        match self.kind {
            RequestType::In => {
                let mut offset = self.sector * SECTOR_SIZE;
                for seg in &self.segments {
                    for (addr, n) in chunks(*seg) {
                        let buf = &mut bounce[..n];
                        disk.read_at(buf, offset).map_err(RequestError::Io)?;
                        mem.write_slice(buf, addr)
                            .map_err(|_| RequestError::Memory)?;
                        offset += n as u64;
                    }
                }
                u32::try_from(self.data_len).map_err(|_| RequestError::Memory)
            }
            RequestType::Out => {
                if disk.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let mut offset = self.sector * SECTOR_SIZE;
                for seg in &self.segments {
                    for (addr, n) in chunks(*seg) {
                        let buf = &mut bounce[..n];
                        mem.read_slice(buf, addr)
                            .map_err(|_| RequestError::Memory)?;
                        disk.write_at(buf, offset).map_err(RequestError::Io)?;
                        offset += n as u64;
                    }
                }
                if write_through {
                    disk.flush().map_err(RequestError::Io)?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                disk.flush().map_err(RequestError::Io)?;
                Ok(0)
            }
            RequestType::GetId => {
                let mut rest: &[u8] = disk.id();
                for seg in &self.segments {
                    let n = rest.len().min(seg.len as usize);
                    mem.write_slice(&rest[..n], seg.addr)
                        .map_err(|_| RequestError::Memory)?;
                    rest = &rest[n..];
                }
                Ok(ID_BYTES as u32)
            }
        }
    }
}

/// Splits a segment into `(address, length)` pieces of at most
/// [`BOUNCE_SIZE`] bytes.
fn chunks(seg: Segment) -> impl Iterator<Item = (GuestAddress, usize)> {
    let len = u64::from(seg.len);
    (0..len).step_by(BOUNCE_SIZE).map(move |off| {
        // `off < len <= u32::MAX`: the result fits usize and BOUNCE_SIZE.
        let n = (len - off).min(BOUNCE_SIZE as u64) as usize;
        (GuestAddress(seg.addr.0.wrapping_add(off)), n)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::super::disk::tests::temp_file;
    use super::*;
    use crate::devices::virtio::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const SECTORS: u64 = 16;

    fn mem() -> GuestMemoryMmap {
        crate::devices::virtio::test_utils::guest_memory()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        let flags = VRING_DESC_F_NEXT | if writable { VRING_DESC_F_WRITE } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// header, one data descriptor, status.
    fn chain(data_len: u32, data_writable: bool) -> Vec<Descriptor> {
        vec![
            desc(HDR, 16, false),
            desc(DATA, data_len, data_writable),
            desc(STATUS, 1, true),
        ]
    }

    fn refused(r: Result<Request, Refused>) -> Refused {
        r.expect_err("request should be refused")
    }

    #[test]
    fn parses_in_out_flush_get_id() {
        let mem = mem();
        header(&mem, req_type::IN, 3);
        let r = parse_descriptors(&chain(1024, true), &mem, SECTORS).unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!(r.sector, 3);
        assert_eq!(r.data_len, 1024);
        assert_eq!(r.status, GuestAddress(STATUS));
        header(&mem, req_type::OUT, 14);
        let r = parse_descriptors(&chain(1024, false), &mem, SECTORS).unwrap();
        assert_eq!(r.kind, RequestType::Out);
        header(&mem, req_type::FLUSH, 0);
        let flush = [desc(HDR, 16, false), desc(STATUS, 1, true)];
        let r = parse_descriptors(&flush, &mem, SECTORS).unwrap();
        assert_eq!((r.kind, r.data_len), (RequestType::Flush, 0));
        header(&mem, req_type::GET_ID, 0);
        let r = parse_descriptors(&chain(20, true), &mem, SECTORS).unwrap();
        assert_eq!(r.kind, RequestType::GetId);
    }

    #[test]
    fn merged_layout_splits_header_and_status_descriptors() {
        let mem = mem();
        header(&mem, req_type::OUT, 0);
        // Header and data in one readable descriptor; status alone.
        let d = [desc(HDR, 16 + 512, false), desc(STATUS, 1, true)];
        let r = parse_descriptors(&d, &mem, SECTORS).unwrap();
        assert_eq!(
            r.segments,
            vec![Segment {
                addr: GuestAddress(HDR + 16),
                len: 512
            }]
        );
        // Data and status in one writable descriptor: status is its last byte.
        header(&mem, req_type::IN, 0);
        let d = [desc(HDR, 16, false), desc(DATA, 513, true)];
        let r = parse_descriptors(&d, &mem, SECTORS).unwrap();
        assert_eq!(r.status, GuestAddress(DATA + 512));
        assert_eq!(r.data_len, 512);
    }

    #[test]
    fn no_usable_status_byte_means_no_status() {
        let mem = mem();
        header(&mem, req_type::IN, 0);
        let cases: Vec<(Vec<Descriptor>, &str)> = vec![
            (vec![], "empty"),
            (vec![desc(HDR, 16, false)], "only a header"),
            (
                vec![desc(HDR, 16, false), desc(STATUS, 1, false)],
                "read-only status",
            ),
            (
                vec![desc(HDR, 16, false), desc(STATUS, 0, true)],
                "empty status",
            ),
            (
                vec![desc(HDR, 16, false), desc(0x1_0000_0000, 1, true)],
                "status outside memory",
            ),
            (
                vec![desc(HDR, 16, false), desc(u64::MAX, 2, true)],
                "status address overflows",
            ),
            (
                vec![desc(HDR, 16, false); MAX_DESCRIPTORS + 1],
                "too many descriptors",
            ),
        ];
        for (d, what) in cases {
            let r = refused(parse_descriptors(&d, &mem, SECTORS));
            assert_eq!(r.status, None, "{what}: {}", r.error);
        }
    }

    #[test]
    fn hostile_requests_get_an_error_status() {
        let mem = mem();
        let check = |t: u32, sector: u64, d: &[Descriptor], want: u8| {
            header(&mem, t, sector);
            let r = refused(parse_descriptors(d, &mem, SECTORS));
            assert_eq!(r.status, Some(d.last().unwrap().addr()), "{}", r.error);
            assert_eq!(r.error.status(), want, "{}", r.error);
            r.error
        };
        let io = status::IOERR;
        // Only a writable status descriptor: no header at all.
        let e = check(0, 0, &[desc(STATUS, 1, true)], io);
        assert!(matches!(e, RequestError::HeaderTooShort(0)));
        // Truncated header.
        let d = [desc(HDR, 15, false), desc(STATUS, 1, true)];
        assert!(matches!(
            check(0, 0, &d, io),
            RequestError::HeaderTooShort(15)
        ));
        // Writable header.
        let d = [desc(HDR, 16, true), desc(STATUS, 1, true)];
        assert!(matches!(
            check(0, 0, &d, io),
            RequestError::HeaderNotReadable
        ));
        // Header outside guest memory.
        let d = [desc(0xffff_fff8, 16, false), desc(STATUS, 1, true)];
        assert!(matches!(
            check(0, 0, &d, io),
            RequestError::BadAddress { .. }
        ));
        // Sector past the end, straddling the end, overflowing.
        let e = check(req_type::IN, SECTORS, &chain(512, true), io);
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        let e = check(req_type::IN, SECTORS - 1, &chain(1024, true), io);
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        let e = check(req_type::OUT, u64::MAX / 512, &chain(512, false), io);
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        let e = check(req_type::OUT, u64::MAX, &chain(512, false), io);
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        // Data length not a whole sector.
        let e = check(req_type::IN, 0, &chain(100, true), io);
        assert!(matches!(e, RequestError::NotSectorMultiple(100)));
        // Wrong data direction for IN, OUT and GET_ID.
        let e = check(req_type::IN, 0, &chain(512, false), io);
        assert!(matches!(e, RequestError::WrongDirection));
        let e = check(req_type::OUT, 0, &chain(512, true), io);
        assert!(matches!(e, RequestError::WrongDirection));
        let e = check(req_type::GET_ID, 0, &chain(20, false), io);
        assert!(matches!(e, RequestError::WrongDirection));
        // Data outside guest memory, and a length that wraps the address space.
        let d = [
            desc(HDR, 16, false),
            desc(0xff_ffff, 512, true),
            desc(STATUS, 1, true),
        ];
        let e = check(req_type::IN, 0, &d, io);
        assert!(matches!(e, RequestError::BadAddress { .. }));
        let d = [
            desc(HDR, 16, false),
            desc(u64::MAX - 10, 512, true),
            desc(STATUS, 1, true),
        ];
        let e = check(req_type::IN, 0, &d, io);
        assert!(matches!(e, RequestError::BadAddress { .. }));
        // GET_ID into a too-small buffer.
        let e = check(req_type::GET_ID, 0, &chain(19, true), io);
        assert!(matches!(e, RequestError::IdBufferTooSmall(19)));
        // FLUSH with data.
        let e = check(req_type::FLUSH, 0, &chain(512, true), io);
        assert!(matches!(e, RequestError::UnexpectedData(512)));
        // Unknown types (DISCARD, WRITE_ZEROES, garbage) are UNSUPP.
        for t in [11, 13, 2, u32::MAX] {
            let e = check(t, 0, &chain(512, true), status::UNSUPP);
            assert!(matches!(e, RequestError::Unsupported(x) if x == t));
        }
    }

    #[test]
    fn execute_reads_writes_and_refuses_read_only() {
        let mem = mem();
        let mut bounce = Box::new([0u8; BOUNCE_SIZE]);
        let path = temp_file("req.img", 512 * SECTORS as usize);
        let rw = Disk::open(&path, false).unwrap();
        // Write 2 sectors at sector 4 from a segment bigger than the bounce
        // buffer would be if it were small: two segments.
        let d = [
            desc(HDR, 16, false),
            desc(DATA, 512, false),
            desc(DATA + 4096, 512, false),
            desc(STATUS, 1, true),
        ];
        mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        mem.write_slice(&[0xbb; 512], GuestAddress(DATA + 4096))
            .unwrap();
        header(&mem, req_type::OUT, 4);
        let r = parse_descriptors(&d, &mem, rw.sectors()).unwrap();
        assert_eq!(r.execute(&mem, &rw, &mut bounce, true).unwrap(), 0);
        // Read 3 sectors from sector 3 back.
        header(&mem, req_type::IN, 3);
        let r = parse_descriptors(&chain(1536, true), &mem, rw.sectors()).unwrap();
        assert_eq!(r.execute(&mem, &rw, &mut bounce, false).unwrap(), 1536);
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        let pattern: Vec<u8> = (3 * 512..4 * 512).map(|i| (i % 251) as u8).collect();
        assert_eq!(&got[..512], &pattern[..]);
        assert!(got[512..1024].iter().all(|&b| b == 0xaa));
        assert!(got[1024..].iter().all(|&b| b == 0xbb));
        // A big read crosses bounce-buffer chunks.
        header(&mem, req_type::IN, 0);
        let d = [
            desc(HDR, 16, false),
            desc(0x40_0000, 512 * SECTORS as u32, true),
            desc(STATUS, 1, true),
        ];
        let r = parse_descriptors(&d, &mem, rw.sectors()).unwrap();
        r.execute(&mem, &rw, &mut bounce, false).unwrap();
        drop(rw);
        // On a read-only disk OUT fails and FLUSH succeeds.
        let ro = Disk::open(&path, true).unwrap();
        header(&mem, req_type::OUT, 0);
        let r = parse_descriptors(&chain(512, false), &mem, ro.sectors()).unwrap();
        assert!(matches!(
            r.execute(&mem, &ro, &mut bounce, false),
            Err(RequestError::ReadOnly)
        ));
        header(&mem, req_type::FLUSH, 0);
        let flush = [desc(HDR, 16, false), desc(STATUS, 1, true)];
        let r = parse_descriptors(&flush, &mem, ro.sectors()).unwrap();
        assert_eq!(r.execute(&mem, &ro, &mut bounce, false).unwrap(), 0);
        // GET_ID spread over two buffers.
        header(&mem, req_type::GET_ID, 0);
        let d = [
            desc(HDR, 16, false),
            desc(DATA, 7, true),
            desc(DATA + 100, 64, true),
            desc(STATUS, 1, true),
        ];
        let r = parse_descriptors(&d, &mem, ro.sectors()).unwrap();
        assert_eq!(r.execute(&mem, &ro, &mut bounce, false).unwrap(), 20);
        let mut a = [0u8; 7];
        let mut b = [0u8; 13];
        mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut b, GuestAddress(DATA + 100)).unwrap();
        assert_eq!([&a[..], &b[..]].concat(), ro.id());
    }

    #[test]
    fn chunks_cover_segment_exactly() {
        let seg = Segment {
            addr: GuestAddress(0x1000),
            len: (2 * BOUNCE_SIZE + 5) as u32,
        };
        let c: Vec<_> = chunks(seg).collect();
        assert_eq!(c.len(), 3);
        assert_eq!(c[2], (GuestAddress(0x1000 + 2 * BOUNCE_SIZE as u64), 5));
        assert_eq!(c.iter().map(|x| x.1).sum::<usize>(), seg.len as usize);
    }
}
