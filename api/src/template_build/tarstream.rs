//! A tar stream read entry by entry with every extension bounded: PAX
//! headers and GNU long names are parsed here (the `tar` crate's own
//! handling reads them whole, however large), so a hostile layer cannot
//! make the builder allocate more than [`MAX_EXTENSION_BYTES`] per entry.

use std::io::{self, Read};

use super::limits::{MAX_EXTENSION_BYTES, MAX_PATH_BYTES, MAX_XATTRS};

/// What kind of file an entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file; its content follows.
    File,
    /// A directory.
    Dir,
    /// A symlink to the target (raw bytes, never resolved).
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry's path.
    HardLink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One entry's header, extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    /// Path as written in the archive.
    pub path: Vec<u8>,
    /// Kind.
    pub kind: Kind,
    /// Permission bits with set-uid, set-gid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes from `SCHILY.xattr.*` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a tar stream was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    /// Reading failed or the stream is truncated.
    #[error("unreadable or truncated tar stream: {0}")]
    Io(#[from] io::Error),
    /// The stream is malformed or breaks a bound.
    #[error("{0}")]
    Invalid(String),
}

/// Extensions waiting for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<i64>,
    size: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Calls `f` with each entry's header and content, in order, stopping at
/// the first error. At most `max_entries` entries.
pub(crate) fn for_each_entry<R: Read, E: From<TarError>>(
    reader: R,
    max_entries: usize,
    mut f: impl FnMut(EntryMeta, &mut dyn Read) -> Result<(), E>,
) -> Result<(), E> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(TarError::from)?.raw(true);
    let mut pending = Pending::default();
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(TarError::from)?;
        count += 1;
        if count > max_entries {
            return Err(invalid(format!("more than {max_entries} entries")).into());
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_local_extensions() {
            let body = read_extension(&mut entry)?;
            parse_pax(&body, &mut pending)?;
            continue;
        }
        if kind.is_pax_global_extensions() {
            read_extension(&mut entry)?;
            continue;
        }
        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            let mut body = read_extension(&mut entry)?;
            while body.last() == Some(&0) {
                body.pop();
            }
            check_len(&body)?;
            if kind.is_gnu_longname() {
                pending.path = Some(body);
            } else {
                pending.link = Some(body);
            }
            continue;
        }
        let ext = std::mem::take(&mut pending);
        if let Some(size) = ext.size {
            if size != entry.size() {
                return Err(
                    invalid("PAX size records (files over 8 GiB) are not supported").into(),
                );
            }
        }
        let meta = meta_of(&entry, &header, ext)?;
        f(meta, &mut entry)?;
    }
    Ok(())
}

fn meta_of<R: Read>(
    entry: &tar::Entry<'_, R>,
    header: &tar::Header,
    ext: Pending,
) -> Result<EntryMeta, TarError> {
    let path = match ext.path {
        Some(p) => p,
        None => header.path_bytes().into_owned(),
    };
    check_len(&path)?;
    let link = || -> Result<Vec<u8>, TarError> {
        let l = match &ext.link {
            Some(l) => l.clone(),
            None => entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .ok_or_else(|| invalid("link entry without a target"))?,
        };
        check_len(&l)?;
        Ok(l)
    };
    let dev = || -> Result<(u32, u32), TarError> {
        let major = header.device_major()?.unwrap_or(0);
        let minor = header.device_minor()?.unwrap_or(0);
        Ok((major, minor))
    };
    let t = header.entry_type();
    let kind = if t.is_file() || t.is_contiguous() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink(link()?)
    } else if t.is_hard_link() {
        Kind::HardLink(link()?)
    } else if t.is_character_special() {
        let (a, b) = dev()?;
        Kind::Char(a, b)
    } else if t.is_block_special() {
        let (a, b) = dev()?;
        Kind::Block(a, b)
    } else if t.is_fifo() {
        Kind::Fifo
    } else {
        return Err(invalid(format!(
            "entry {:?} has unsupported type {:?}",
            String::from_utf8_lossy(&path),
            t.as_byte() as char
        )));
    };
    let id = |v: io::Result<u64>| -> Result<u32, TarError> {
        u32::try_from(v?)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| invalid("uid or gid out of range"))
    };
    let uid = match ext.uid {
        Some(u) => u,
        None => id(blank_is_zero(header.uid(), &header.as_old().uid))?,
    };
    let gid = match ext.gid {
        Some(g) => g,
        None => id(blank_is_zero(header.gid(), &header.as_old().gid))?,
    };
    let mtime = match ext.mtime {
        Some(m) => m,
        None => i64::try_from(blank_is_zero(header.mtime(), &header.as_old().mtime)?)
            .map_err(|_| invalid("mtime out of range"))?,
    };
    Ok(EntryMeta {
        path,
        kind,
        mode: blank_is_zero(header.mode().map(u64::from), &header.as_old().mode)? as u32 & 0o7777,
        uid,
        gid,
        mtime,
        xattrs: ext.xattrs,
    })
}

/// A numeric header field, 0 when it is blank (NULs or spaces), as
/// some archivers write them.
fn blank_is_zero(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        other => other,
    }
}

/// A uid or gid: `u32::MAX` means "unchanged" to chown, so it is refused.
fn id(s: &str) -> Result<u32, TarError> {
    s.parse::<u32>()
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| invalid("uid or gid out of range"))
}

fn invalid(msg: impl Into<String>) -> TarError {
    TarError::Invalid(msg.into())
}

fn check_len(path: &[u8]) -> Result<(), TarError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!(
            "a path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    Ok(())
}

fn read_extension(entry: &mut impl Read) -> Result<Vec<u8>, TarError> {
    let mut body = Vec::new();
    entry.take(MAX_EXTENSION_BYTES + 1).read_to_end(&mut body)?;
    if body.len() as u64 > MAX_EXTENSION_BYTES {
        return Err(invalid(format!(
            "an extended header is larger than {MAX_EXTENSION_BYTES} bytes"
        )));
    }
    Ok(body)
}

/// Parses PAX records (`<len> <key>=<value>\n`, `len` counting the whole
/// record, so values may hold any byte) into `pending`.
fn parse_pax(mut body: &[u8], pending: &mut Pending) -> Result<(), TarError> {
    while !body.is_empty() {
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| invalid("malformed PAX record"))?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("malformed PAX record length"))?;
        if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err(invalid("malformed PAX record"));
        }
        let record = &body[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("PAX record without '='"))?;
        apply_pax(&record[..eq], &record[eq + 1..], pending)?;
        body = &body[len..];
    }
    Ok(())
}

fn apply_pax(key: &[u8], value: &[u8], p: &mut Pending) -> Result<(), TarError> {
    let number = |what: &str| -> Result<&str, TarError> {
        std::str::from_utf8(value).map_err(|_| invalid(format!("PAX {what} is not a number")))
    };
    match key {
        b"path" => p.path = Some(value.to_vec()),
        b"linkpath" => p.link = Some(value.to_vec()),
        b"uid" => p.uid = Some(id(number("uid")?)?),
        b"gid" => p.gid = Some(id(number("gid")?)?),
        b"size" => {
            p.size = Some(
                number("size")?
                    .parse()
                    .map_err(|_| invalid("PAX size out of range"))?,
            )
        }
        b"mtime" => {
            let s = number("mtime")?;
            let whole = s.split('.').next().unwrap_or(s);
            p.mtime = Some(
                whole
                    .parse()
                    .map_err(|_| invalid("PAX mtime out of range"))?,
            );
        }
        _ if key.starts_with(b"SCHILY.xattr.") => {
            if p.xattrs.len() >= MAX_XATTRS {
                return Err(invalid(format!(
                    "more than {MAX_XATTRS} xattrs on one entry"
                )));
            }
            let name = &key[b"SCHILY.xattr.".len()..];
            if name.is_empty() || name.len() > 255 || name.contains(&0) {
                return Err(invalid("malformed xattr name"));
            }
            p.xattrs.push((name.to_vec(), value.to_vec()));
        }
        k if k.starts_with(b"GNU.sparse.") => {
            return Err(invalid("sparse files are not supported"));
        }
        // Other records (atime, ctime, charset, comment...) change nothing
        // in the image.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pax(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} ").as_bytes());
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn pax_records_carry_binary_xattrs_and_ids() {
        let body = pax(&[
            (b"SCHILY.xattr.security.capability", b"\x01\n\x00="),
            (b"uid", b"4242"),
            (b"mtime", b"1700000000.123"),
        ]);
        let mut p = Pending::default();
        parse_pax(&body, &mut p).expect("parse");
        assert_eq!(
            p.xattrs,
            vec![(b"security.capability".to_vec(), b"\x01\n\x00=".to_vec())]
        );
        assert_eq!((p.uid, p.mtime), (Some(4242), Some(1_700_000_000)));
    }

    #[test]
    fn malformed_pax_is_refused() {
        for bad in [
            &b"5 a=b"[..],
            b"99 path=x\n",
            b"x path=y\n",
            b"9 pathxy\n",
            b"3 \n",
        ] {
            assert!(parse_pax(bad, &mut Pending::default()).is_err(), "{bad:?}");
        }
        let too_many: Vec<(Vec<u8>, Vec<u8>)> = (0..=MAX_XATTRS)
            .map(|i| (format!("SCHILY.xattr.user.{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let refs: Vec<(&[u8], &[u8])> = too_many.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert!(parse_pax(&pax(&refs), &mut Pending::default()).is_err());
    }

    #[test]
    fn oversized_extension_is_refused_without_reading_it_all() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(MAX_EXTENSION_BYTES + 10);
        h.set_cksum();
        let big = vec![b'a'; (MAX_EXTENSION_BYTES + 10) as usize];
        b.append(&h, &big[..]).expect("append");
        let bytes = b.into_inner().expect("tar");
        let r = for_each_entry(&bytes[..], 10, |_, _| Ok::<(), TarError>(()));
        assert!(matches!(r, Err(TarError::Invalid(m)) if m.contains("extended header")));
    }

    #[test]
    fn entries_come_with_their_kinds() {
        let header = |kind, mode, uid, size| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_uid(uid);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, "a/link", "../target").expect("link");
        // gid and mtime left blank: read as 0.
        let mut h = header(tar::EntryType::Regular, 0o4755, 7, 3);
        b.append_data(&mut h, "a/file", &b"abc"[..]).expect("file");
        let bytes = b.into_inner().expect("tar");
        let mut seen = Vec::new();
        for_each_entry(&bytes[..], 10, |m, body| {
            let mut s = Vec::new();
            body.read_to_end(&mut s).map_err(TarError::from)?;
            seen.push((m, s));
            Ok::<(), TarError>(())
        })
        .expect("read");
        assert_eq!(seen[0].0.kind, Kind::Symlink(b"../target".to_vec()));
        assert_eq!(
            (seen[1].0.mode, seen[1].0.uid, seen[1].0.gid),
            (0o4755, 7, 0)
        );
        assert_eq!(seen[1].1, b"abc");
        assert!(for_each_entry(&bytes[..], 1, |_, _| Ok::<(), TarError>(())).is_err());
    }
}
