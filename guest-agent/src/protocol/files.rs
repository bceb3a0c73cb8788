//! Bodies of the file messages: write, read, list, stat, remove, mkdir,
//! rename.
//!
//! Exchanges (one connection each):
//! - `FileWrite`, then `FileChunk`* and `FileEnd{size, sha256}` from the
//!   host (what it sent; the agent checks it) -> `FileWritten{size, sha256}`;
//! - `FileRead` -> `FileChunk`* then `FileEnd{size, sha256}`;
//! - `ListDir` -> `DirEntries`* then `ListEnd`;
//! - `Stat` -> `Entry`;
//! - `Remove`, `Mkdir`, `Rename` -> `Ok`;
//!
//! and any of them -> `Error{code, message}` instead. Paths are UTF-8,
//! absolute ones inside the sandbox root, relative ones from the sandbox
//! user's home.

use super::wire::{DecodeError, Decoder, Encoder};

/// Longest path a request may carry (bytes).
pub const MAX_PATH: usize = 4096;
/// Longest path component (bytes), as in Linux.
pub const MAX_NAME: usize = 255;
/// Most entries in one `DirEntries` frame. An entry is at most ~800 bytes
/// (a 255-byte name made lossy UTF-8 triples), so a frame stays far below
/// the 1 MiB payload limit.
pub const MAX_LIST_ENTRIES: u32 = 1024;
/// Mode of a written file whose request gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of a made directory whose request gives none.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// Mode bits a request may set (permissions only: no setuid/setgid/sticky).
pub const MODE_MASK: u32 = 0o777;

/// Host -> agent: write a file, atomically. The contents follow as
/// `FileChunk` frames and a final `FileEnd` with the size and SHA-256 of
/// what the host sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileWrite {
    /// Where.
    pub path: String,
    /// Permission bits ([`MODE_MASK`]); `None` = [`DEFAULT_FILE_MODE`].
    pub mode: Option<u32>,
    /// Make missing parent directories ([`DEFAULT_DIR_MODE`]).
    pub create_parents: bool,
    /// Replace an existing file; without it an existing path is `Exists`.
    pub overwrite: bool,
}

/// Size and SHA-256 of a file's contents (`FileEnd`, `FileWritten`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileDigest {
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
}

/// Host -> agent: stream a regular file back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRead {
    /// Which file.
    pub path: String,
}

/// Host -> agent: list a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListDir {
    /// Which directory.
    pub path: String,
}

/// Host -> agent: describe one path (a symlink itself, not its target).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Which path.
    pub path: String,
}

/// Host -> agent: remove a file, symlink or directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remove {
    /// What.
    pub path: String,
    /// Remove a directory with everything in it; without it only an empty
    /// directory can be removed.
    pub recursive: bool,
}

/// Host -> agent: make a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mkdir {
    /// Where.
    pub path: String,
    /// Make missing parents too, and succeed if the directory exists
    /// (`mkdir -p`).
    pub parents: bool,
    /// Permission bits ([`MODE_MASK`]); `None` = [`DEFAULT_DIR_MODE`].
    pub mode: Option<u32>,
}

/// Host -> agent: move a path (rename(2) semantics: replaces a file or an
/// empty directory at `to`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rename {
    /// Existing path.
    pub from: String,
    /// New path.
    pub to: String,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

impl EntryKind {
    fn to_u8(self) -> u8 {
        match self {
            Self::File => 0,
            Self::Dir => 1,
            Self::Symlink => 2,
            Self::Other => 3,
        }
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::File,
            1 => Self::Dir,
            2 => Self::Symlink,
            3 => Self::Other,
            tag => return Err(DecodeError::InvalidTag { field: "kind", tag }),
        })
    }
}

/// Agent -> host: one file system entry (`Stat` reply, `DirEntries` item).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Last path component (`/` for the root). Names that are not UTF-8
    /// are converted lossily.
    pub name: String,
    /// File, directory, symlink or other.
    pub kind: EntryKind,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nanos: u32,
}

/// Smallest encoded [`Entry`]: empty name (4), kind (1), size (8), mode
/// (4), mtime (8 + 4).
const MIN_ENTRY_LEN: usize = 29;

fn opt_u32(e: &mut Encoder, v: Option<u32>) {
    match v {
        None => e.u8(0),
        Some(v) => e.u8(1).u32(v),
    };
}

fn decode_opt_u32(d: &mut Decoder<'_>, field: &'static str) -> Result<Option<u32>, DecodeError> {
    Ok(if d.bool(field)? {
        Some(d.u32(field)?)
    } else {
        None
    })
}

impl FileWrite {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.str(&self.path);
        opt_u32(e, self.mode);
        e.bool(self.create_parents).bool(self.overwrite);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            path: d.string("path")?,
            mode: decode_opt_u32(d, "mode")?,
            create_parents: d.bool("create_parents")?,
            overwrite: d.bool("overwrite")?,
        })
    }
}

impl FileDigest {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.u64(self.size).fixed(&self.sha256);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            size: d.u64("size")?,
            sha256: d.array("sha256")?,
        })
    }

    /// The digest as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        use std::fmt::Write as _;
        self.sha256.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

macro_rules! path_only {
    ($($t:ident),*) => {$(
        impl $t {
            pub(crate) fn encode(&self, e: &mut Encoder) {
                e.str(&self.path);
            }

            pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
                Ok(Self { path: d.string("path")? })
            }
        }
    )*};
}

path_only!(FileRead, ListDir, Stat);

impl Remove {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.str(&self.path).bool(self.recursive);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            path: d.string("path")?,
            recursive: d.bool("recursive")?,
        })
    }
}

impl Mkdir {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.str(&self.path).bool(self.parents);
        opt_u32(e, self.mode);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            path: d.string("path")?,
            parents: d.bool("parents")?,
            mode: decode_opt_u32(d, "mode")?,
        })
    }
}

impl Rename {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.str(&self.from).str(&self.to);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            from: d.string("from")?,
            to: d.string("to")?,
        })
    }
}

impl Entry {
    pub(crate) fn encode(&self, e: &mut Encoder) {
        e.str(&self.name)
            .u8(self.kind.to_u8())
            .u64(self.size)
            .u32(self.mode)
            .i64(self.mtime_secs)
            .u32(self.mtime_nanos);
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: d.string("name")?,
            kind: EntryKind::from_u8(d.u8("kind")?)?,
            size: d.u64("size")?,
            mode: d.u32("mode")?,
            mtime_secs: d.i64("mtime_secs")?,
            mtime_nanos: d.u32("mtime_nanos")?,
        })
    }

    /// Upper bound of this entry's encoded size.
    pub fn encoded_len(&self) -> usize {
        MIN_ENTRY_LEN + self.name.len()
    }
}

pub(crate) fn encode_entries(entries: &[Entry], e: &mut Encoder) {
    e.list(entries, |e, entry| entry.encode(e));
}

pub(crate) fn decode_entries(d: &mut Decoder<'_>) -> Result<Vec<Entry>, DecodeError> {
    d.list("entries", MAX_LIST_ENTRIES, MIN_ENTRY_LEN, Entry::decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, MessageKind, MAX_CHUNK, MAX_FRAME_PAYLOAD};

    fn entry(name: &str, kind: EntryKind) -> Entry {
        Entry {
            name: name.into(),
            kind,
            size: u64::MAX,
            mode: 0o7777,
            mtime_secs: i64::MIN,
            mtime_nanos: 999_999_999,
        }
    }

    fn file_messages() -> Vec<Message> {
        let digest = FileDigest {
            size: 5 << 30,
            sha256: std::array::from_fn(|i| u8::try_from(i * 7).unwrap_or(0)),
        };
        vec![
            Message::FileWrite(FileWrite {
                path: "dir with space/ünïcode.bin".into(),
                mode: Some(0o600),
                create_parents: true,
                overwrite: false,
            }),
            Message::FileWrite(FileWrite::default()),
            Message::FileChunk((0..=255u8).collect()),
            Message::FileChunk(Vec::new()),
            Message::FileEnd(digest),
            Message::FileEnd(FileDigest::default()),
            Message::FileRead(FileRead {
                path: "/etc/../x".into(),
            }),
            Message::ListDir(ListDir { path: ".".into() }),
            Message::Stat(Stat { path: "a".into() }),
            Message::Remove(Remove {
                path: "/tmp/x".into(),
                recursive: true,
            }),
            Message::Mkdir(Mkdir {
                path: "a/b/c".into(),
                parents: true,
                mode: None,
            }),
            Message::Mkdir(Mkdir {
                path: "a".into(),
                parents: false,
                mode: Some(0o700),
            }),
            Message::Rename(Rename {
                from: "a".into(),
                to: "b c".into(),
            }),
            Message::FileWritten(digest),
            Message::DirEntries(vec![
                entry("a", EntryKind::File),
                entry("", EntryKind::Dir),
                entry("ß", EntryKind::Symlink),
                entry("fifo", EntryKind::Other),
            ]),
            Message::DirEntries(Vec::new()),
            Message::ListEnd,
            Message::Entry(entry("/", EntryKind::Dir)),
        ]
    }

    #[test]
    fn file_messages_round_trip() {
        for msg in file_messages() {
            let body = msg.encode_body();
            let back = Message::decode(msg.kind() as u8, &body).expect("decode");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn truncated_and_padded_bodies_are_rejected() {
        for msg in file_messages() {
            let body = msg.encode_body();
            for n in 0..body.len() {
                let res = Message::decode(msg.kind() as u8, &body[..n]);
                assert!(res.is_err(), "{msg:?} prefix {n} decoded as {res:?}");
            }
            let mut padded = body.clone();
            padded.push(0);
            assert_eq!(
                Message::decode(msg.kind() as u8, &padded),
                Err(DecodeError::TrailingBytes(1))
            );
        }
    }

    #[test]
    fn hostile_entry_counts_are_rejected_before_allocating() {
        // Too many for the protocol.
        let body = (MAX_LIST_ENTRIES + 1).to_le_bytes();
        assert!(matches!(
            Message::decode(MessageKind::DirEntries as u8, &body),
            Err(DecodeError::TooMany { .. })
        ));
        // Allowed count, but no bytes behind it.
        let mut body = MAX_LIST_ENTRIES.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; MIN_ENTRY_LEN]);
        assert_eq!(
            Message::decode(MessageKind::DirEntries as u8, &body),
            Err(DecodeError::Truncated("entries"))
        );
    }

    #[test]
    fn bad_utf8_and_bad_tags_are_rejected() {
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0xc3, 0x28]);
        for kind in [
            MessageKind::FileRead,
            MessageKind::ListDir,
            MessageKind::Stat,
        ] {
            assert_eq!(
                Message::decode(kind as u8, &body),
                Err(DecodeError::InvalidUtf8("path"))
            );
        }
        let mut e = Encoder::new();
        entry("x", EntryKind::File).encode(&mut e);
        let mut body = e.finish();
        body[4 + 1] = 4; // kind byte after "x"
        let mut d = Decoder::new(&body);
        assert_eq!(
            Entry::decode(&mut d),
            Err(DecodeError::InvalidTag {
                field: "kind",
                tag: 4
            })
        );
        // mode option tag 2
        let mut e = Encoder::new();
        e.str("p").u8(2);
        assert!(matches!(
            Message::decode(MessageKind::Mkdir as u8, &e.finish()),
            Err(DecodeError::InvalidTag { .. })
        ));
    }

    #[test]
    fn random_bodies_never_panic() {
        let kinds = [0x10u8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for kind in kinds.into_iter().chain([0x90, 0x91, 0x92, 0x93]) {
            for len in 0..200usize {
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x.to_le_bytes()[0]
                    })
                    .collect();
                let _ = Message::decode(kind, &body);
            }
        }
    }

    #[test]
    fn a_full_list_frame_fits() {
        let name = "\u{FFFD}".repeat(MAX_NAME);
        let msg = Message::DirEntries(
            (0..MAX_LIST_ENTRIES)
                .map(|_| entry(&name, EntryKind::File))
                .collect(),
        );
        let body = msg.encode_body();
        assert!(body.len() <= MAX_FRAME_PAYLOAD as usize, "{}", body.len());
        let chunk = Message::FileChunk(vec![0; MAX_CHUNK]).encode_body();
        assert!(chunk.len() <= MAX_FRAME_PAYLOAD as usize);
    }

    #[test]
    fn digest_hex() {
        let d = FileDigest {
            size: 0,
            sha256: [0xab; 32],
        };
        assert_eq!(d.sha256_hex(), "ab".repeat(32));
    }
}
