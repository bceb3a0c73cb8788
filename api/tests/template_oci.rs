//! `kiln::template_build::build_from_oci` on images made here: an OCI
//! layout and a `docker save` archive with several layers (whiteout,
//! opaque directory, symlink, hard link, set-uid file, xattrs, other
//! owners, a device node and a fifo), read back by mounting the erofs image
//! read-only in a private mount namespace and comparing the whole tree;
//! and the refusals, each leaving no output and no scratch files behind.
//!
//! Needs root (the builder does), `mkfs.erofs`, `unshare`, loop devices
//! and python3 (the tree dump); this machine runs tests as root.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::template_build::{build_from_oci, OciBuildError, OciBuildOptions, OciImage};
use sha2::{Digest, Sha256};

/// Every entry's mtime in the test layers.
const MTIME: u64 = 1_600_000_000;
/// A newer mtime on one file, kept as is.
const NEW_MTIME: u64 = 1_700_000_000;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One layer entry.
enum E<'a> {
    Dir(&'a str, u32, u32),
    File(&'a str, &'a [u8], u32, u32, &'a [(&'a str, &'a [u8])]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    /// A raw path written as is (for `..` entries the builder refuses).
    Raw(&'a [u8]),
}

fn header(kind: tar::EntryType, mode: u32, owner: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner.into());
    h.set_gid(owner.into());
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// A layer tar.
fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode, owner) => {
                let mut h = header(tar::EntryType::Directory, *mode, *owner, 0);
                b.append_data(&mut h, p, &[][..]).expect("dir");
            }
            E::File(p, data, mode, owner, xattrs) => {
                if !xattrs.is_empty() {
                    let recs: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                        .collect();
                    b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                        .expect("pax");
                }
                let mut h = header(tar::EntryType::Regular, *mode, *owner, data.len() as u64);
                if p.ends_with("newer") {
                    h.set_mtime(NEW_MTIME);
                }
                b.append_data(&mut h, p, *data).expect("file");
            }
            E::Link(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                b.append_link(&mut h, p, target).expect("symlink");
            }
            E::Hard(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
                b.append_link(&mut h, p, target).expect("hard link");
            }
            E::Char(p, major, minor) => {
                let mut h = header(tar::EntryType::Char, 0o620, 0, 0);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                b.append_data(&mut h, p, &[][..]).expect("char");
            }
            E::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0o600, 0, 0);
                b.append_data(&mut h, p, &[][..]).expect("fifo");
            }
            E::Raw(p) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0, 4);
                h.as_mut_bytes()[..p.len()].copy_from_slice(p);
                h.set_cksum();
                b.append(&h, &b"evil"[..]).expect("raw");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn busybox() -> Vec<u8> {
    std::fs::read("/usr/bin/busybox")
        .expect("the host's static busybox (apt install busybox-static)")
}

/// The three layers of the test image, as (uncompressed tar, how to
/// compress it).
fn test_layers() -> Vec<Vec<u8>> {
    let sh = busybox();
    let base = layer(&[
        E::Dir("./", 0o755, 0),
        E::Dir("bin", 0o755, 0),
        E::File("bin/busybox", &sh, 0o755, 0, &[]),
        E::Link("bin/sh", "/bin/busybox"),
        E::Dir("etc", 0o755, 0),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n",
            0o644,
            0,
            &[],
        ),
        E::File("etc/gone", b"deleted by layer 2\n", 0o644, 0, &[]),
        E::Dir("opaque", 0o755, 0),
        E::File("opaque/lower", b"hidden by layer 2\n", 0o644, 0, &[]),
        E::Dir("data", 0o750, 1234),
        E::File("data/owned", b"owned by 1234:1234\n", 0o640, 1234, &[]),
        E::Dir("replaced", 0o755, 0),
        E::File("replaced/inner", b"x", 0o644, 0, &[]),
        E::File(
            "gonedir/sub/file",
            b"deleted with its directory\n",
            0o644,
            0,
            &[],
        ),
    ]);
    let middle = layer(&[
        E::File("etc/.wh.gone", b"", 0o644, 0, &[]),
        E::File(".wh.gonedir", b"", 0o644, 0, &[]),
        E::Dir("opaque", 0o755, 0),
        E::File("opaque/.wh..wh..opq", b"", 0o644, 0, &[]),
        E::File("opaque/upper", b"from layer 2\n", 0o644, 0, &[]),
        E::File("replaced", b"a file now\n", 0o600, 0, &[]),
        E::Dir("usr", 0o755, 0),
        E::Dir("usr/bin", 0o755, 0),
        E::File("usr/bin/suid", b"#!/bin/sh\necho suid\n", 0o4755, 0, &[]),
        E::File("usr/bin/sgid", b"#!/bin/sh\n", 0o2711, 0, &[]),
        E::Dir("shared", 0o1777, 0),
    ]);
    let top = layer(&[
        E::File(
            "data/xattrs",
            b"with xattrs\n",
            0o644,
            0,
            &[("user.kiln", b"hello"), ("trusted.kiln", b"\x00\x01bin\n")],
        ),
        E::File("data/newer", b"newer mtime\n", 0o644, 0, &[]),
        E::Hard("data/hardlink", "data/owned"),
        E::Link("data/rel-link", "../etc/passwd"),
        E::Dir("dev", 0o755, 0),
        E::Char("dev/null", 1, 3),
        E::Fifo("data/fifo"),
    ]);
    vec![base, middle, top]
}

/// The tree the test image must unpack to, one dump line per entry (see
/// [`dump`]); `mtime` of the entries the builder adds is the newest layer
/// mtime (`SOURCE_DATE_EPOCH` clamping).
fn expected_tree() -> Vec<String> {
    let sh = busybox();
    let (t, n) = (MTIME, NEW_MTIME);
    let f = |p: &str, mode: &str, owner: u32, mtime: u64, body: &[u8], extra: &str| {
        format!(
            "{p} f {mode} {owner}:{owner} {mtime} {} {extra}",
            sha256_hex(body)
        )
    };
    let d = |p: &str, mode: &str, owner: u32, mtime: u64| {
        format!("{p} d {mode} {owner}:{owner} {mtime} - ")
    };
    let passwd =
        b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:kiln sandbox:/home/sandbox:/bin/sh\n";
    let group = b"root:x:0:\nsandbox:x:1000:\n";
    let mut lines = vec![
        d(".", "0755", 0, t),
        d("bin", "0755", 0, t),
        f("bin/busybox", "0755", 0, t, &sh, ""),
        format!("bin/sh l 0777 0:0 {t} /bin/busybox "),
        d("data", "0750", 1234, t),
        format!("data/fifo p 0600 0:0 {t} - "),
        f(
            "data/hardlink",
            "0640",
            1234,
            t,
            b"owned by 1234:1234\n",
            "hardlink=data/hardlink",
        ),
        f("data/newer", "0644", 0, n, b"newer mtime\n", ""),
        f(
            "data/owned",
            "0640",
            1234,
            t,
            b"owned by 1234:1234\n",
            "hardlink=data/hardlink",
        ),
        format!("data/rel-link l 0777 0:0 {t} ../etc/passwd "),
        f(
            "data/xattrs",
            "0644",
            0,
            t,
            b"with xattrs\n",
            "trusted.kiln=000162696e0a,user.kiln=68656c6c6f",
        ),
        d("dev", "0755", 0, t),
        format!("dev/null c 0620 0:0 {t} 1,3 "),
        // The builder added etc/group: etc's mtime is the build's.
        d("etc", "0755", 0, n),
        f("etc/group", "0644", 0, n, group, ""),
        f("etc/passwd", "0644", 0, n, passwd, ""),
        d("home", "0755", 0, n),
        d("home/sandbox", "0755", 1000, n),
        d("opaque", "0755", 0, t),
        f("opaque/upper", "0644", 0, t, b"from layer 2\n", ""),
        d("proc", "0555", 0, n),
        f("replaced", "0600", 0, t, b"a file now\n", ""),
        d("run", "0755", 0, n),
        d("shared", "1777", 0, t),
        d("sys", "0555", 0, n),
        d("tmp", "1777", 0, n),
        d("usr", "0755", 0, t),
        d("usr/bin", "0755", 0, t),
        f("usr/bin/sgid", "2711", 0, t, b"#!/bin/sh\n", ""),
        f("usr/bin/suid", "4755", 0, t, b"#!/bin/sh\necho suid\n", ""),
    ];
    lines.sort();
    lines
}

/// Prints one line per entry of the tree at argv[1]: path, type, mode,
/// owner, mtime, then the content's sha256, the link target or the device
/// numbers, then the first path sharing a multiply-linked inode and the
/// xattrs (hex values).
const DUMP_PY: &str = r#"
import hashlib, os, stat, sys
root = sys.argv[1]
paths = ["."]
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        paths.append(os.path.relpath(os.path.join(d, n), root))
first = {}
for p in sorted(paths):
    st = os.lstat(os.path.join(root, p))
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        first.setdefault(st.st_ino, p)
for p in sorted(paths):
    full = os.path.join(root, p)
    st = os.lstat(full)
    m = st.st_mode
    kind = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
            stat.S_IFBLK: "b", stat.S_IFIFO: "p"}[stat.S_IFMT(m)]
    if kind == "f":
        what = hashlib.sha256(open(full, "rb").read()).hexdigest()
    elif kind == "l":
        what = os.readlink(full)
    elif kind in "cb":
        what = "%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        what = "-"
    extra = []
    if kind == "f" and st.st_nlink > 1:
        extra.append("hardlink=" + first[st.st_ino])
    xs = sorted(os.listxattr(full, follow_symlinks=False))
    if xs:
        extra.append(",".join("%s=%s" % (k, os.getxattr(full, k, follow_symlinks=False).hex()) for k in xs))
    print("%s %s %04o %d:%d %d %s %s" % (p, kind, stat.S_IMODE(m), st.st_uid, st.st_gid,
          int(st.st_mtime), what, " ".join(extra)))
"#;

/// The tree in the erofs image `image`, mounted read-only in a private
/// mount namespace (gone with the command).
fn dump(image: &Path) -> Vec<String> {
    let mnt = tempfile::tempdir().expect("mount point");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t erofs -o loop,ro "$1" "$2" && exec python3 -c "$3" "$2""#)
        .arg("sh")
        .arg(image)
        .arg(mnt.path())
        .arg(DUMP_PY)
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "mounting {} failed: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 dump")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Image config JSON.
fn config_json(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hello"],
            "WorkingDir": "/data",
            "User": "1234:1234",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json")
}

/// An OCI image layout written by the test.
struct Layout {
    dir: PathBuf,
    manifest_digest: String,
    layer_files: Vec<PathBuf>,
    config_file: PathBuf,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> (String, PathBuf) {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir blobs");
    std::fs::write(&path, bytes).expect("write blob");
    (format!("sha256:{hex}"), path)
}

/// Writes an OCI layout of `layers` (compressed: plain, gzip, zstd in
/// turn) for `arch` into `dir`.
fn oci_layout(dir: &Path, layers: &[Vec<u8>], arch: &str) -> Layout {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_files = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let (blob, media) = match i % 3 {
            0 => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            1 => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
            _ => (zstd(tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        let (digest, path) = write_blob(dir, &blob);
        layer_files.push(path);
        descs.push(serde_json::json!({"mediaType": media, "digest": digest, "size": blob.len()}));
    }
    let config = config_json(arch, &diff_ids);
    let (config_digest, config_file) = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest");
    let (manifest_digest, _) = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "test"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    Layout {
        dir: dir.to_owned(),
        manifest_digest,
        layer_files,
        config_file,
    }
}

/// Writes a legacy `docker save` archive of `layers` (each gzip'd, named
/// `<n>/layer.tar` as docker does) to `path`; returns the config digest.
fn docker_archive(path: &Path, layers: &[Vec<u8>]) -> String {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|t| format!("sha256:{}", sha256_hex(t)))
        .collect();
    let config = config_json("amd64", &diff_ids);
    let config_hex = sha256_hex(&config);
    let mut files: Vec<(String, Vec<u8>)> = vec![(format!("{config_hex}.json"), config)];
    let mut layer_paths = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let p = format!("{:064x}/layer.tar", i + 1);
        layer_paths.push(p.clone());
        files.push((p, gzip(tar)));
    }
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["example/test:latest"],
        "Layers": layer_paths,
    }]);
    files.push(("manifest.json".into(), manifest.to_string().into_bytes()));
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..])
            .expect("archive entry");
    }
    std::fs::write(path, b.into_inner().expect("archive")).expect("write archive");
    format!("sha256:{config_hex}")
}

/// Options with a dedicated scratch directory, to check it is left empty.
fn options(scratch: &Path) -> OciBuildOptions {
    std::fs::create_dir_all(scratch).expect("scratch");
    OciBuildOptions {
        scratch_dir: Some(scratch.to_owned()),
        ..OciBuildOptions::default()
    }
}

fn assert_config(image: &OciImage, digest: &str, layers: usize) {
    assert_eq!(image.digest, digest);
    assert_eq!(image.layers, layers);
    assert_eq!(
        (image.os.as_str(), image.architecture.as_str()),
        ("linux", "amd64")
    );
    assert_eq!(image.env, ["PATH=/usr/bin:/bin", "GREETING=hi"]);
    assert_eq!(image.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.cmd, ["echo hello"]);
    assert_eq!(image.working_dir.as_deref(), Some("/data"));
    assert_eq!(image.user.as_deref(), Some("1234:1234"));
    assert!(image.image_bytes > 0 && image.unpacked_bytes > 0);
}

fn assert_tree(image: &Path) {
    let got = dump(image);
    let want = expected_tree();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "first differing entry");
    }
    assert_eq!(got, want, "whole tree");
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn oci_layout_with_plain_gzip_and_zstd_layers_unpacks_to_the_exact_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = oci_layout(&tmp.path().join("layout"), &test_layers(), "amd64");
    let scratch = tmp.path().join("scratch");
    let out = tmp.path().join("image.erofs");
    let image = build_from_oci(&layout.dir, &out, &options(&scratch)).expect("build");
    assert_config(&image, &layout.manifest_digest, 3);
    assert_eq!(
        image.image_bytes,
        std::fs::metadata(&out).expect("image").len()
    );
    assert_tree(&out);
    assert_empty(&scratch);

    // The same image builds to the same bytes.
    let again = tmp.path().join("again.erofs");
    build_from_oci(&layout.dir, &again, &options(&scratch)).expect("rebuild");
    assert!(
        std::fs::read(&out).expect("first") == std::fs::read(&again).expect("second"),
        "two builds of one image differ"
    );
}

#[test]
fn docker_save_archive_with_gzip_layers_unpacks_to_the_same_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = tmp.path().join("image.tar");
    let config_digest = docker_archive(&archive, &test_layers());
    let scratch = tmp.path().join("scratch");
    let out = tmp.path().join("image.erofs");
    let by_tag = OciBuildOptions {
        reference: Some("example/test:latest".into()),
        ..options(&scratch)
    };
    let image = build_from_oci(&archive, &out, &by_tag).expect("build");
    assert_config(&image, &config_digest, 3);
    assert_eq!(image.config_digest, config_digest);
    assert_tree(&out);
    assert_empty(&scratch);
}

#[test]
fn an_oci_layout_inside_a_tar_archive_builds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = oci_layout(&tmp.path().join("layout"), &test_layers(), "amd64");
    let archive = tmp.path().join("layout.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout.dir)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let out = tmp.path().join("image.erofs");
    let image = build_from_oci(&archive, &out, &options(&tmp.path().join("s"))).expect("build");
    assert_eq!(image.digest, layout.manifest_digest);
    assert_tree(&out);
}

#[test]
fn symlinks_from_lower_layers_never_lead_outside_the_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).expect("victim dir");
    let victim_str = victim.to_str().expect("utf-8 path");
    let sh = busybox();
    let layers = vec![
        layer(&[
            E::File("bin/sh", &sh, 0o755, 0, &[]),
            E::Link("abs", victim_str),
            E::Link("rel", "../../../../../../../../.."),
        ]),
        layer(&[
            E::File("abs/pwned", b"x", 0o644, 0, &[]),
            E::File("rel/tmp/pwned", b"x", 0o644, 0, &[]),
        ]),
    ];
    let layout = oci_layout(&tmp.path().join("layout"), &layers, "amd64");
    let out = tmp.path().join("image.erofs");
    build_from_oci(&layout.dir, &out, &options(&tmp.path().join("s"))).expect("build");
    assert_empty(&victim);
    assert!(!Path::new("/tmp/pwned").exists());
    let tree = dump(&out);
    // Both writes landed inside the image, where the links resolve in the
    // guest too.
    let victim_in_image = victim_str.trim_start_matches('/');
    assert!(
        tree.iter()
            .any(|l| l.starts_with(&format!("{victim_in_image}/pwned f "))),
        "{tree:#?}"
    );
    assert!(
        tree.iter().any(|l| l.starts_with("tmp/pwned f ")),
        "{tree:#?}"
    );
}

/// Builds `source` expecting an error; checks nothing is left behind.
fn refused(tmp: &Path, source: &Path) -> OciBuildError {
    let scratch = tmp.join("scratch-refused");
    let out = tmp.join("refused.erofs");
    let err = build_from_oci(source, &out, &options(&scratch)).expect_err("must be refused");
    assert!(!out.exists(), "an image was written for a refused source");
    assert_empty(&scratch);
    let leftovers: Vec<_> = std::fs::read_dir(tmp)
        .expect("tmp")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("refused.erofs"))
        .collect();
    assert!(leftovers.is_empty(), "temporary image left behind");
    err
}

#[test]
fn corrupt_and_tampered_images_are_refused_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = test_layers();

    // A docker archive cut in the middle of a layer.
    let archive = tmp.path().join("cut.tar");
    docker_archive(&archive, &layers);
    let bytes = std::fs::read(&archive).expect("archive");
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = refused(tmp.path(), &archive);
    assert!(
        matches!(
            err,
            OciBuildError::Archive { .. } | OciBuildError::MissingBlob { .. }
        ),
        "{err}"
    );

    // Not an archive at all.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, vec![0x55u8; 4096]).expect("junk");
    let err = refused(tmp.path(), &junk);
    assert!(matches!(err, OciBuildError::Archive { .. }), "{err}");

    // A missing layer blob, named by digest.
    let layout = oci_layout(&tmp.path().join("missing"), &layers, "amd64");
    std::fs::remove_file(&layout.layer_files[1]).expect("remove layer");
    let err = refused(tmp.path(), &layout.dir);
    let name = layout.layer_files[1]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        matches!(&err, OciBuildError::MissingBlob { name: n, .. } if n.ends_with(&name)),
        "{err}"
    );
    assert!(err.to_string().contains("layer 2"), "{err}");

    // A layer blob whose content does not match its digest.
    let layout = oci_layout(&tmp.path().join("tampered"), &layers, "amd64");
    let mut blob = std::fs::read(&layout.layer_files[0]).expect("layer");
    let last = blob.len() - 1;
    blob[last] ^= 1;
    std::fs::write(&layout.layer_files[0], blob).expect("tamper");
    let err = refused(tmp.path(), &layout.dir);
    assert!(matches!(err, OciBuildError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("layer 1"), "{err}");

    // A manifest whose layer descriptor gives the wrong size.
    let layout = oci_layout(&tmp.path().join("size"), &layers, "amd64");
    let hex = &layout.manifest_digest["sha256:".len()..];
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("blobs/sha256").join(hex)).expect("manifest"),
    )
    .expect("manifest json");
    let size = manifest["layers"][2]["size"].as_u64().expect("size");
    manifest["layers"][2]["size"] = (size + 1).into();
    let (digest, _) = write_blob(&layout.dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": digest}]});
    std::fs::write(layout.dir.join("index.json"), index.to_string()).expect("index");
    let err = refused(tmp.path(), &layout.dir);
    assert!(matches!(err, OciBuildError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("layer 3 sha256:"), "{err}");

    // A config edited after the manifest was written.
    let layout = oci_layout(&tmp.path().join("config"), &layers, "amd64");
    let config = std::fs::read_to_string(&layout.config_file).expect("config");
    std::fs::write(
        &layout.config_file,
        config.replace("GREETING=hi", "GREETING=ho"),
    )
    .expect("edit");
    let err = refused(tmp.path(), &layout.dir);
    assert!(matches!(err, OciBuildError::DigestMismatch { .. }), "{err}");
}

#[test]
fn images_the_guest_cannot_run_are_refused_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sh = busybox();
    let one = |entries: &[E]| vec![layer(entries)];

    let arm = oci_layout(
        &tmp.path().join("arm"),
        &one(&[E::File("bin/sh", &sh, 0o755, 0, &[])]),
        "arm64",
    );
    let err = refused(tmp.path(), &arm.dir);
    assert!(matches!(err, OciBuildError::WrongPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    let empty = oci_layout(
        &tmp.path().join("empty"),
        &one(&[E::Dir("etc", 0o755, 0)]),
        "amd64",
    );
    let err = refused(tmp.path(), &empty.dir);
    assert!(err.to_string().contains("no /bin/sh"), "{err}");

    // The host's dash is dynamically linked; without its loader it cannot
    // start in the guest.
    let dash = std::fs::read("/bin/dash").expect("/bin/dash");
    let dynamic = oci_layout(
        &tmp.path().join("dynamic"),
        &one(&[E::File("bin/sh", &dash, 0o755, 0, &[])]),
        "amd64",
    );
    let err = refused(tmp.path(), &dynamic.dir);
    assert!(
        err.to_string()
            .contains("ld-linux-x86-64.so.2, which is not in the image"),
        "{err}"
    );
}

#[test]
fn hostile_layer_entries_are_refused_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sh = busybox();
    let cases: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        (
            "parent",
            layer(&[E::File("bin/sh", &sh, 0o755, 0, &[]), E::Raw(b"../escaped")]),
        ),
        (
            "nested",
            layer(&[
                E::File("bin/sh", &sh, 0o755, 0, &[]),
                E::Raw(b"bin/../../escaped"),
            ]),
        ),
        (
            "whiteout",
            layer(&[E::File("bin/sh", &sh, 0o755, 0, &[]), E::Raw(b"bin/.wh...")]),
        ),
        (
            "hardlink",
            layer(&[
                E::File("bin/sh", &sh, 0o755, 0, &[]),
                E::Hard("bin/x", "/etc/../../etc/passwd"),
            ]),
        ),
    ]);
    for (name, tar) in cases {
        let layout = oci_layout(&tmp.path().join(name), &[tar], "amd64");
        let err = refused(tmp.path(), &layout.dir);
        assert!(
            matches!(err, OciBuildError::PathTraversal { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("escapes the image root"),
            "{name}: {err}"
        );
    }
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn a_manifest_list_without_linux_amd64_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("list");
    let layout = oci_layout(
        &dir,
        &[layer(&[E::File("bin/sh", &busybox(), 0o755, 0, &[])])],
        "amd64",
    );
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": layout.manifest_digest,
            "platform": {"os": "linux", "architecture": "arm64"},
        }],
    }))
    .expect("list");
    let (list_digest, _) = write_blob(&dir, &list);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": list_digest,
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    let err = refused(tmp.path(), &dir);
    assert!(
        err.to_string()
            .contains("no linux/amd64 entry (platforms: linux/arm64)"),
        "{err}"
    );
}

#[test]
fn docker_archives_may_link_a_repeated_layer() {
    // Old `docker save` writes a layer that repeats as a symlink to the
    // first copy.
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar = layer(&[E::File("bin/sh", &busybox(), 0o755, 0, &[])]);
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let config = config_json("amd64", &[diff_id.clone(), diff_id]);
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": null, "Layers": ["a/layer.tar", "b/layer.tar"],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (config_name.as_str(), config.clone()),
        ("a/layer.tar", tar.clone()),
        ("manifest.json", manifest.to_string().into_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).expect("entry");
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "b/layer.tar", "../a/layer.tar")
        .expect("link");
    let archive = tmp.path().join("image.tar");
    std::fs::write(&archive, b.into_inner().expect("archive")).expect("write");
    let out = tmp.path().join("image.erofs");
    let image = build_from_oci(&archive, &out, &options(&tmp.path().join("s"))).expect("build");
    assert_eq!(image.layers, 2);
    assert!(dump(&out)
        .iter()
        .any(|l| l.starts_with("bin/sh f 0755 0:0 ")));
}

#[test]
fn a_gzip_compressed_archive_builds_within_its_size_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = tmp.path().join("image.tar");
    docker_archive(&plain, &test_layers());
    let archive = tmp.path().join("image.tar.gz");
    std::fs::write(&archive, gzip(&std::fs::read(&plain).expect("archive"))).expect("gzip");
    let scratch = tmp.path().join("scratch");
    let out = tmp.path().join("image.erofs");
    build_from_oci(&archive, &out, &options(&scratch)).expect("build");
    assert_tree(&out);

    std::fs::remove_file(&out).expect("remove");
    let small = OciBuildOptions {
        max_unpacked_bytes: 64 << 10,
        ..options(&scratch)
    };
    let err = build_from_oci(&archive, &out, &small).expect_err("over the bound");
    assert!(
        format!("{err:?}").contains("more than the allowed size"),
        "{err:?}"
    );
    assert!(!out.exists());
    assert_empty(&scratch);
}
