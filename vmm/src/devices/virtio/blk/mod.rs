//! virtio-blk: a disk backed by a host file (or block device), read-only or
//! read-write.
//!
//! Files: `disk.rs` opens, sizes, locks and reads/writes the backing file;
//! `request.rs` parses a request from a descriptor chain the guest controls
//! and executes it against the disk; `device.rs` holds the virtio state (one
//! request queue, the config space); `event_handler.rs` the event-loop side.
//!
//! Bounds: a chain has at most [`MAX_DESCRIPTORS`] descriptors; every data
//! buffer is checked against guest memory and every request against the
//! disk size before any byte moves; I/O goes through one bounce buffer of
//! [`BOUNCE_SIZE`] bytes; one queue notification serves at most a queue's
//! worth of requests and about [`MAX_BYTES_PER_TURN`] bytes.

mod device;
mod disk;
mod event_handler;
pub mod request;

use std::path::PathBuf;

pub use device::Blk;
pub use disk::Disk;

/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size the virtio-blk protocol counts in.
pub const SECTOR_SIZE: u64 = 512;
/// Most data segments per request, offered as `seg_max` (the header and the
/// status take the other two descriptors of a full ring).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most descriptors in one request chain.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HDR_SIZE: usize = 16;
/// Length of the device id string (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
/// Size of the bounce buffer data moves through.
pub const BOUNCE_SIZE: usize = 128 * 1024;
/// Bytes served per event-loop turn before the device yields to the others.
pub const MAX_BYTES_PER_TURN: u64 = 16 << 20;

/// Feature bit: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: the device has a write cache and handles FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request types (`virtio_blk_outhdr.type`).
pub mod req_type {
    /// Read sectors.
    pub const IN: u32 = 0;
    /// Write sectors.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// Read the device id string.
    pub const GET_ID: u32 = 8;
}

/// Request status bytes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The request failed.
    pub const IOERR: u8 = 1;
    /// The request type is not supported.
    pub const UNSUPP: u8 = 2;
}

/// Errors from setting up a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// The backing file cannot be opened.
    #[error("cannot open drive {path}: {source}")]
    Open {
        /// The drive file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is neither a regular file nor a block device.
    #[error("drive {0} is not a regular file or block device")]
    NotAFile(PathBuf),
    /// The backing file's size cannot be determined.
    #[error("cannot get the size of drive {path}: {source}")]
    Size {
        /// The drive file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is smaller than one sector.
    #[error("drive {path} is {size} bytes, smaller than one {SECTOR_SIZE}-byte sector")]
    TooSmall {
        /// The drive file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another process holds a conflicting lock on the backing file.
    #[error("drive {0} is locked: in use by another VM, or attached twice with one read-write")]
    Locked(PathBuf),
    /// Locking the backing file failed.
    #[error("cannot lock drive {path}: {source}")]
    Lock {
        /// The drive file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd")]
    EventFd(#[source] std::io::Error),
}
