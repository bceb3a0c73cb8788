//! What `Resume` does in a VM restored from a snapshot: every clone of a
//! snapshot starts with the same kernel RNG state and a wall clock stopped
//! when the snapshot was taken, so the host's fresh seed goes into the
//! RNG (credited, and the CRNG reseeded from it at once) and the host's
//! time becomes the guest's.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use kiln_agent::protocol::Resume;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Errors from applying a resume.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// /dev/urandom could not be opened.
    #[error("cannot open /dev/urandom: {0}")]
    Open(#[source] std::io::Error),
    /// The kernel refused the seed.
    #[error("RNDADDENTROPY: {0}")]
    AddEntropy(#[source] std::io::Error),
    /// The kernel refused to reseed.
    #[error("RNDRESEEDCRNG: {0}")]
    Reseed(#[source] std::io::Error),
    /// The host time does not fit a timespec.
    #[error("host time {0} ns is out of range")]
    Time(u64),
    /// The clock could not be set.
    #[error("clock_settime: {0}")]
    SetClock(#[source] std::io::Error),
}

/// `struct rand_pool_info` with the seed as its buffer.
fn rand_pool_info(seed: &[u8]) -> Vec<u8> {
    let bits = i32::try_from(seed.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(seed.len()).unwrap_or(i32::MAX);
    let mut buf = Vec::with_capacity(8 + seed.len());
    buf.extend_from_slice(&bits.to_ne_bytes());
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(seed);
    buf
}

/// Mixes `seed` into the kernel RNG and reseeds the CRNG from it.
fn reseed(seed: &[u8]) -> Result<(), ResumeError> {
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(ResumeError::Open)?;
    let info = rand_pool_info(seed);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow its 8-byte header; `info` is exactly that and outlives the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc < 0 {
        return Err(ResumeError::AddEntropy(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc < 0 {
        return Err(ResumeError::Reseed(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets CLOCK_REALTIME to `unix_time_ns`.
fn set_clock(unix_time_ns: u64) -> Result<(), ResumeError> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(unix_time_ns / 1_000_000_000)
            .map_err(|_| ResumeError::Time(unix_time_ns))?,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc < 0 {
        return Err(ResumeError::SetClock(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Applies `resume` to this guest.
pub fn apply(resume: &Resume) -> Result<(), ResumeError> {
    reseed(&resume.seed)?;
    set_clock(resume.unix_time_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4]);
        assert_eq!(&info[..4], &32i32.to_ne_bytes());
        assert_eq!(&info[4..8], &4i32.to_ne_bytes());
        assert_eq!(&info[8..], &[1, 2, 3, 4]);
    }

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // _IOW('R', 0x03, int[2]): dir 1, size 8, type 'R' (0x52), nr 3.
        assert_eq!(RNDADDENTROPY, (1 << 30) | (8 << 16) | (0x52 << 8) | 3);
        assert_eq!(RNDRESEEDCRNG, (0x52 << 8) | 7);
    }
}
