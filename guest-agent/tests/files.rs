//! The files API against a real agent on a unix socket, confined with
//! `--files-root DIR` to a temp directory (never the host's root).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{random_bytes, Agent, TempDir};
use kiln_agent::client::files::{self, FilesError};
use kiln_agent::protocol::files::{EntryKind, FileDigest, FileWrite};
use kiln_agent::protocol::{read_message, write_message, ErrorCode, Message, MAX_CHUNK};

/// An agent whose files root is `<tmp>/root` (with `home/sandbox`), next
/// to a file outside the root that must stay unreachable.
struct Fixture {
    agent: Agent,
    base: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let base = TempDir::new("files");
        fs::create_dir_all(base.path().join("root/home/sandbox")).expect("mkdir");
        fs::write(base.path().join("outside-secret"), b"host secret").expect("write");
        let root = base.path().join("root");
        let agent = Agent::start_with(&[OsStr::new("--files-root"), root.as_os_str()]);
        Self { agent, base }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn home(&self) -> PathBuf {
        self.root().join("home/sandbox")
    }

    fn upload(&self, path: &str, data: &[u8]) -> Result<FileDigest, FilesError> {
        files::upload(&mut self.agent.connect(), path, None, data)
    }

    fn download(&self, path: &str) -> Result<Vec<u8>, FilesError> {
        let mut out = Vec::new();
        files::download(&mut self.agent.connect(), path, &mut out)?;
        Ok(out)
    }
}

fn code(err: &FilesError) -> ErrorCode {
    err.agent_code()
        .unwrap_or_else(|| panic!("not an agent error: {err:?}"))
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[test]
fn random_binary_round_trips() {
    let f = Fixture::new();
    for (i, len) in [0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 5 << 20]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, i as u64 + 1);
        let name = format!("bin/{len}.bin");
        let written = f.upload(&name, &data).expect("upload");
        assert_eq!(written.size, len as u64);
        assert_eq!(written.sha256, sha(&data));
        let on_disk = f.home().join(&name);
        assert_eq!(fs::read(&on_disk).expect("on disk"), data, "{len}");
        assert_eq!(
            fs::metadata(&on_disk).expect("meta").permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(f.download(&name).expect("download"), data, "{len}");
    }
    // Explicit mode, absolute path.
    files::upload(
        &mut f.agent.connect(),
        "/x.sh",
        Some(0o4755),
        &b"#!/bin/sh\n"[..],
    )
    .expect("upload");
    let mode = fs::metadata(f.root().join("x.sh"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid bits are masked");
}

/// A reader of `len` pseudo-random bytes that never holds more than one
/// buffer.
struct Stream {
    left: u64,
    x: u64,
    hasher: Sha256,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX))
            & !7;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            chunk.copy_from_slice(&self.x.to_le_bytes()[..chunk.len()]);
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A sink that only hashes.
struct HashSink(Sha256, u64);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_200_mib_file_streams_both_ways() {
    let f = Fixture::new();
    const LEN: u64 = 200 << 20;
    let mut source = Stream {
        left: LEN,
        x: 0x1234_5678_9abc_def1,
        hasher: Sha256::new(),
    };
    let written =
        files::upload(&mut f.agent.connect(), "big.bin", None, &mut source).expect("upload");
    let expected: [u8; 32] = source.hasher.finalize().into();
    assert_eq!(written.size, LEN);
    assert_eq!(written.sha256, expected);
    assert_eq!(
        fs::metadata(f.home().join("big.bin")).expect("meta").len(),
        LEN
    );
    let mut sink = HashSink(Sha256::new(), 0);
    let got = files::download(&mut f.agent.connect(), "big.bin", &mut sink).expect("download");
    assert_eq!(got.size, LEN);
    assert_eq!(sink.1, LEN);
    assert_eq!(<[u8; 32]>::from(sink.0.finalize()), expected);
}

#[test]
fn names_with_spaces_and_unicode() {
    let f = Fixture::new();
    let path = "dir with space/ünïcödé 文件 🦀.txt";
    f.upload(path, b"hello").expect("upload");
    assert_eq!(fs::read(f.home().join(path)).expect("on disk"), b"hello");
    let entries = files::list_dir(&mut f.agent.connect(), "dir with space").expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "ünïcödé 文件 🦀.txt");
    assert_eq!(entries[0].kind, EntryKind::File);
    assert_eq!(entries[0].size, 5);
    assert_eq!(f.download(path).expect("download"), b"hello");
}

#[test]
fn escapes_stay_inside_the_root() {
    let f = Fixture::new();
    let base = f.base.path().to_owned();
    // `..` and absolute paths land inside the root.
    f.upload("../../../../../../outside-secret", b"a")
        .expect("upload");
    assert_eq!(
        fs::read(f.root().join("outside-secret")).expect("inside"),
        b"a"
    );
    f.upload("/../../etc/kiln-test", b"b").expect("upload");
    assert_eq!(
        fs::read(f.root().join("etc/kiln-test")).expect("inside"),
        b"b"
    );
    let abs = base.join("outside-secret");
    let abs = abs.to_str().expect("utf8");
    assert_eq!(
        code(&f.download(abs).expect_err("host path")),
        ErrorCode::NotFound
    );

    // Symlinks pointing out: absolute to the base, relative far up.
    std::os::unix::fs::symlink(&base, f.home().join("abs")).expect("symlink");
    std::os::unix::fs::symlink("../../../../../../..", f.home().join("up")).expect("symlink");
    std::os::unix::fs::symlink(base.join("outside-secret"), f.home().join("evil"))
        .expect("symlink");
    assert_eq!(
        code(&f.download("abs/outside-secret").expect_err("escape")),
        ErrorCode::NotFound
    );
    // "up" is the root itself: its outside-secret is the copy made above.
    assert_eq!(f.download("up/outside-secret").expect("inside"), b"a");
    let listed = files::list_dir(&mut f.agent.connect(), "up").expect("list");
    assert!(listed.iter().any(|e| e.name == "home"), "{listed:?}");
    assert!(files::remove(&mut f.agent.connect(), "abs/outside-secret", false).is_err());
    assert!(files::upload(&mut f.agent.connect(), "abs/new", None, &b"x"[..]).is_err());
    assert!(files::rename(&mut f.agent.connect(), "abs/outside-secret", "stolen").is_err());
    assert!(files::mkdir(&mut f.agent.connect(), "abs/newdir", true, None).is_err());
    // Writing "evil" replaces the link, never its target.
    assert_eq!(code(&f.upload_no_overwrite("evil")), ErrorCode::Exists);
    f.upload("evil", b"replaced").expect("upload");
    assert!(fs::symlink_metadata(f.home().join("evil"))
        .expect("meta")
        .is_file());
    // Stat describes the link, not the target.
    let st = files::stat(&mut f.agent.connect(), "abs").expect("stat");
    assert_eq!(st.kind, EntryKind::Symlink);

    assert_eq!(
        fs::read(base.join("outside-secret")).expect("read"),
        b"host secret"
    );
    let mut names: Vec<_> = fs::read_dir(&base)
        .expect("read base")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["outside-secret", "root"]);
}

impl Fixture {
    fn upload_no_overwrite(&self, path: &str) -> FilesError {
        let req = FileWrite {
            path: path.into(),
            mode: None,
            create_parents: false,
            overwrite: false,
        };
        files::upload_with(&mut self.agent.connect(), &req, &b"new"[..]).expect_err("must fail")
    }
}

#[test]
fn list_stat_mkdir_rename_remove() {
    let f = Fixture::new();
    let c = || f.agent.connect();
    files::mkdir(&mut c(), "a/b/c", true, Some(0o700)).expect("mkdir -p");
    files::mkdir(&mut c(), "a/b/c", true, None).expect("mkdir -p existing");
    assert_eq!(
        fs::metadata(f.home().join("a/b/c"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(f.home().join("a/b"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        code(&files::mkdir(&mut c(), "a", false, None).expect_err("exists")),
        ErrorCode::Exists
    );
    assert_eq!(
        code(&files::mkdir(&mut c(), "x/y", false, None).expect_err("no parent")),
        ErrorCode::NotFound
    );
    files::mkdir(&mut c(), "a/d", false, Some(0o750)).expect("mkdir");
    assert_eq!(
        fs::metadata(f.home().join("a/d"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    f.upload("a/file", b"12345").expect("upload");

    let mut names: Vec<_> = files::list_dir(&mut c(), "a")
        .expect("list")
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    names.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        names,
        [
            ("b".to_owned(), EntryKind::Dir),
            ("d".to_owned(), EntryKind::Dir),
            ("file".to_owned(), EntryKind::File)
        ]
    );
    let st = files::stat(&mut c(), "a/file").expect("stat");
    assert_eq!(
        (st.name.as_str(), st.kind, st.size, st.mode),
        ("file", EntryKind::File, 5, 0o644)
    );
    let meta = fs::metadata(f.home().join("a/file")).expect("meta");
    assert_eq!(
        (st.mtime_secs, i64::from(st.mtime_nanos)),
        (meta.mtime(), meta.mtime_nsec())
    );
    let root = files::stat(&mut c(), "/").expect("stat root");
    assert_eq!((root.name.as_str(), root.kind), ("/", EntryKind::Dir));
    assert_eq!(
        code(&files::stat(&mut c(), "nope").expect_err("missing")),
        ErrorCode::NotFound
    );

    files::rename(&mut c(), "a/file", "a/b/moved file").expect("rename");
    assert_eq!(f.download("a/b/moved file").expect("download"), b"12345");
    assert_eq!(
        code(&f.download("a/file").expect_err("gone")),
        ErrorCode::NotFound
    );

    assert_eq!(
        code(&files::remove(&mut c(), "a", false).expect_err("not empty")),
        ErrorCode::NotEmpty
    );
    files::remove(&mut c(), "a/d", false).expect("rmdir empty");
    std::os::unix::fs::symlink("/", f.home().join("a/b/c/root-link")).expect("symlink");
    files::remove(&mut c(), "a", true).expect("rm -r");
    assert!(!f.home().join("a").exists());
    assert!(f.home().exists(), "the link was removed, not followed");
    assert_eq!(
        code(&files::remove(&mut c(), "a", true).expect_err("gone")),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&files::remove(&mut c(), "/", true).expect_err("root")),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(&files::remove(&mut c(), "x/..", true).expect_err("..")),
        ErrorCode::BadRequest
    );
}

#[test]
fn big_directories_list_in_several_frames() {
    let f = Fixture::new();
    let dir = f.home().join("many");
    fs::create_dir(&dir).expect("mkdir");
    let long = "n".repeat(200);
    for i in 0..3000 {
        fs::write(dir.join(format!("{long}{i:05}")), b"").expect("create");
    }
    let mut s = f.agent.connect();
    write_message(
        &mut s,
        &Message::ListDir(kiln_agent::protocol::files::ListDir {
            path: "many".into(),
        }),
    )
    .expect("send");
    let (mut frames, mut total) = (0, 0);
    loop {
        match read_message(&mut s).expect("read") {
            Message::DirEntries(e) => {
                frames += 1;
                total += e.len();
            }
            Message::ListEnd => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, 3000);
    assert!(frames >= 3, "{frames} frames");
}

#[test]
fn failures_are_clear_errors() {
    let f = Fixture::new();
    let write = |path: &str, parents: bool, overwrite: bool| {
        let req = FileWrite {
            path: path.into(),
            mode: None,
            create_parents: parents,
            overwrite,
        };
        files::upload_with(&mut f.agent.connect(), &req, &b"data"[..])
    };
    assert_eq!(
        code(&write("no/such/dir/f", false, true).expect_err("no dir")),
        ErrorCode::NotFound
    );
    assert!(!f.home().join("no").exists());
    write("f", false, false).expect("new file");
    assert_eq!(
        code(&write("f", false, false).expect_err("exists")),
        ErrorCode::Exists
    );
    write("f", false, true).expect("overwrite");
    fs::create_dir(f.home().join("d")).expect("mkdir");
    assert_eq!(
        code(&write("d", false, true).expect_err("dir")),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(&write("f/x", false, true).expect_err("file parent")),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        code(&f.download("d").expect_err("read dir")),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(&f.download("missing").expect_err("missing")),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(&files::list_dir(&mut f.agent.connect(), "f").expect_err("list file")),
        ErrorCode::NotADirectory
    );
    let long = "a/".repeat(3000);
    assert_eq!(
        code(&f.download(&long).expect_err("long")),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(&f.download("").expect_err("empty")),
        ErrorCode::BadRequest
    );
    // A fifo is refused without blocking the agent.
    let fifo = std::ffi::CString::new(f.home().join("fifo").to_str().expect("utf8")).expect("c");
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(
        code(&f.download("fifo").expect_err("fifo")),
        ErrorCode::BadRequest
    );
    assert_eq!(
        files::stat(&mut f.agent.connect(), "fifo")
            .expect("stat")
            .kind,
        EntryKind::Other
    );
}

/// Names in the home directory.
fn home_names(f: &Fixture) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(f.home())
        .expect("read home")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    names
}

fn wait_for_home(f: &Fixture, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = home_names(f);
        if names == expected || Instant::now() > deadline {
            assert_eq!(names, expected);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_upload(f: &Fixture, path: &str, chunks: usize) -> std::os::unix::net::UnixStream {
    let mut s = f.agent.connect();
    let req = FileWrite {
        path: path.into(),
        mode: None,
        create_parents: false,
        overwrite: true,
    };
    write_message(&mut s, &Message::FileWrite(req)).expect("send");
    for _ in 0..chunks {
        write_message(&mut s, &Message::FileChunk(vec![7; MAX_CHUNK])).expect("chunk");
    }
    s
}

#[test]
fn interrupted_uploads_leave_nothing() {
    let f = Fixture::new();
    f.upload("keep", b"old").expect("upload");

    // Host hangs up mid-upload: no file, no temp file, old content kept.
    for path in ["new", "keep"] {
        let s = start_upload(&f, path, 20);
        // Wait until the agent is writing the temp file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !home_names(&f)
            .iter()
            .any(|n| n.starts_with(".kiln-upload-"))
        {
            assert!(Instant::now() < deadline, "no temp file appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(s);
        wait_for_home(&f, &["keep"]);
        assert_eq!(fs::read(f.home().join("keep")).expect("read"), b"old");
    }

    // Digest mismatch: refused, nothing left.
    let mut s = start_upload(&f, "new", 2);
    let wrong = FileDigest {
        size: 2 * MAX_CHUNK as u64,
        sha256: [0; 32],
    };
    write_message(&mut s, &Message::FileEnd(wrong)).expect("end");
    match read_message(&mut s).expect("reply") {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::Mismatch),
        other => panic!("unexpected {other:?}"),
    }
    wait_for_home(&f, &["keep"]);

    // Something other than a chunk mid-upload.
    let mut s = start_upload(&f, "new", 1);
    write_message(&mut s, &Message::Ping).expect("ping");
    match read_message(&mut s).expect("reply") {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("unexpected {other:?}"),
    }
    wait_for_home(&f, &["keep"]);

    // Chunks or FileEnd without a FileWrite are not requests.
    let mut s = f.agent.connect();
    write_message(&mut s, &Message::FileChunk(vec![1])).expect("send");
    match read_message(&mut s).expect("reply") {
        Message::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_host_agent_without_a_files_root_refuses() {
    let agent = Agent::start();
    let err = files::stat(&mut agent.connect(), "/").expect_err("disabled");
    assert_eq!(code(&err), ErrorCode::BadRequest);
    let err = files::upload(&mut agent.connect(), "/tmp/x", None, &b"x"[..]).expect_err("disabled");
    assert_eq!(code(&err), ErrorCode::BadRequest);
}

/// With `--sandbox-root` (root only) file requests run as uid 1000, like
/// programs: root-owned files are off limits and new files belong to 1000.
#[test]
fn sandbox_root_acts_as_the_sandbox_user() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to uid 1000");
        return;
    }
    let base = TempDir::new("files-user");
    let root = base.path().join("root");
    fs::create_dir_all(root.join("locked")).expect("mkdir");
    fs::write(root.join("secret"), b"root only").expect("write");
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let agent = Agent::start_with(&[OsStr::new("--sandbox-root"), root.as_os_str()]);
    let c = || agent.connect();
    let mut out = Vec::new();
    let err = files::download(&mut c(), "/secret", &mut out).expect_err("root only");
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    let err = files::upload(&mut c(), "/locked/x", None, &b"x"[..]).expect_err("root dir");
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    let err = files::remove(&mut c(), "/secret", false).expect_err("root dir");
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    files::upload(&mut c(), "mine.txt", None, &b"x"[..]).expect("upload to home");
    let meta = fs::metadata(root.join("home/sandbox/mine.txt")).expect("meta");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // The switch was per request: the next one works as before.
    assert_eq!(files::stat(&mut c(), "/secret").expect("stat").size, 9);
}
