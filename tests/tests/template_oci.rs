//! A custom template from an OCI image, as the guest sees it: an OCI
//! layout made here (three layers: the host's static busybox as /bin/sh, a
//! whiteout, an opaque directory, a symlink, a hard link, a set-uid file,
//! other owners, a device node, a fifo, an xattr) is built into an erofs
//! image with `kiln::template_build::build_from_oci`, attached as the
//! `minimal` template's drive, and its tree is checked from inside the
//! guest with busybox.
//!
//! The builder runs inside the testbed (root) and needs `mkfs.erofs` on
//! `PATH`: stage it with `--file "$(command -v mkfs.erofs)=bin/mkfs.erofs"`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use kiln::template_build::{build_from_oci, OciBuildOptions};
use kiln_e2e::vm::{boot_spec, ok, sh, spec};
use kiln_vmm::config::DriveConfig;
use sha2::{Digest, Sha256};

const SHUTDOWN: Duration = Duration::from_secs(30);
const MTIME: u64 = 1_600_000_000;

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A tar header for `kind` with `mode`, owner `uid:uid` and `size`.
fn header(kind: tar::EntryType, mode: u32, uid: u64, size: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(MTIME);
    h.set_size(size as u64);
    h
}

/// Adds a regular file.
fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32, uid: u64) {
    let mut h = header(tar::EntryType::Regular, mode, uid, data.len());
    b.append_data(&mut h, path, data).expect("file");
}

/// Adds an entry without content.
fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32) {
    let mut h = header(kind, mode, 0, 0);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
    }
    b.append_data(&mut h, path, &[][..]).expect("entry");
}

/// Adds a symlink or hard link.
fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, target: &str) {
    let mut h = header(kind, 0o777, 0, 0);
    b.append_link(&mut h, path, target).expect("link");
}

fn layers() -> Vec<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").expect("the testbed's static /bin/busybox");
    let mut base = tar::Builder::new(Vec::new());
    special(&mut base, "bin", tar::EntryType::Directory, 0o755);
    file(&mut base, "bin/busybox", &busybox, 0o755, 0);
    link(&mut base, "bin/sh", tar::EntryType::Symlink, "busybox");
    file(&mut base, "etc/gone", b"deleted\n", 0o644, 0);
    file(&mut base, "opaque/lower", b"hidden\n", 0o644, 0);
    file(&mut base, "data/owned", b"owned\n", 0o640, 1234);

    let mut middle = tar::Builder::new(Vec::new());
    file(&mut middle, "etc/.wh.gone", b"", 0o644, 0);
    special(&mut middle, "opaque", tar::EntryType::Directory, 0o755);
    file(&mut middle, "opaque/.wh..wh..opq", b"", 0o644, 0);
    file(&mut middle, "opaque/upper", b"upper\n", 0o644, 0);
    file(&mut middle, "usr/bin/suid", b"#!/bin/sh\n", 0o4755, 0);

    let mut top = tar::Builder::new(Vec::new());
    top.append_pax_extensions([("SCHILY.xattr.user.kiln", &b"hello"[..])])
        .expect("pax");
    file(&mut top, "data/xattrs", b"x\n", 0o600, 2000);
    link(
        &mut top,
        "data/hardlink",
        tar::EntryType::Link,
        "data/owned",
    );
    link(
        &mut top,
        "data/rel-link",
        tar::EntryType::Symlink,
        "../opaque/upper",
    );
    special(&mut top, "data/null", tar::EntryType::Char, 0o666);
    special(&mut top, "data/fifo", tar::EntryType::Fifo, 0o600);

    [base, middle, top]
        .into_iter()
        .map(|b| b.into_inner().expect("tar"))
        .collect()
}

fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path = dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("blobs");
    std::fs::write(path, bytes).expect("blob");
    digest
}

/// Writes an OCI layout of `layers` (the second gzip'd) into `dir`.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let mut descs = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let (blob, media) = if i == 1 {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            (
                e.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let digest = write_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": media, "digest": digest, "size": blob.len()}));
    }
    let diff_ids: Vec<String> = layers.iter().map(|t| sha256(t)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = write_blob(dir, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let manifest_digest = write_blob(dir, manifest.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest.len(),
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

#[test]
fn a_template_built_from_an_oci_layout_shows_its_tree_in_the_guest() {
    let dir = std::env::temp_dir().join(format!("kiln-e2e-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("layout")).expect("dir");
    oci_layout(&dir.join("layout"), &layers());
    let image_path = dir.join("image.erofs");
    let image = build_from_oci(
        &dir.join("layout"),
        &image_path,
        &OciBuildOptions::default(),
    )
    .expect("build the image (mkfs.erofs must be on PATH)");
    assert_eq!(image.layers, 3);

    let mut vm_spec = spec();
    vm_spec.config.drives = vec![DriveConfig {
        path: image_path.clone(),
        read_only: true,
    }];
    let vm = boot_spec(&vm_spec);

    let stat = ok(&sh(
        &vm,
        "cd / && busybox stat -c '%n %F %a %u:%g %h' bin/sh data/owned data/hardlink \
         data/rel-link data/null data/fifo data/xattrs opaque usr/bin/suid home/sandbox",
    ));
    assert_eq!(
        stat,
        "bin/sh symbolic link 777 0:0 1\n\
         data/owned regular file 640 1234:1234 2\n\
         data/hardlink regular file 640 1234:1234 2\n\
         data/rel-link symbolic link 777 0:0 1\n\
         data/null character special file 666 0:0 1\n\
         data/fifo fifo 600 0:0 1\n\
         data/xattrs regular file 600 2000:2000 1\n\
         opaque directory 755 0:0 2\n\
         usr/bin/suid regular file 4755 0:0 1\n\
         home/sandbox directory 755 1000:1000 2\n"
    );
    // The whiteout and the opaque directory hid the lower entries; the
    // links resolve; the device node is the null device (the overlay is
    // nodev: it cannot be opened); the hard link shares its inode; mtimes
    // are the layers'.
    let bb = |script: &str| ok(&sh(&vm, script));
    assert_eq!(
        bb("busybox ls -a /opaque; busybox ls /etc"),
        ".\n..\nupper\ngroup\npasswd\n"
    );
    assert_eq!(
        bb("busybox cat /data/rel-link; busybox readlink /data/rel-link"),
        "upper\n../opaque/upper\n"
    );
    assert_eq!(bb("busybox stat -c '%t,%T' /data/null"), "1,3\n");
    assert_eq!(
        bb("[ $(busybox stat -c %i /data/owned) = $(busybox stat -c %i /data/hardlink) ] && echo same"),
        "same\n"
    );
    assert_eq!(bb("busybox stat -c %Y /usr/bin/suid"), format!("{MTIME}\n"));
    // Programs run as the sandbox user the builder added, in its home.
    assert_eq!(
        bb("busybox id -un; busybox id -u; pwd"),
        "sandbox\n1000\n/home/sandbox\n"
    );
    // The root is the image under a writable overlay.
    assert_eq!(
        bb("echo new > added && busybox cat added && busybox grep -c '^overlay / overlay ' /proc/mounts"),
        "new\n1\n"
    );
    vm.shutdown(SHUTDOWN).expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same layout through the CLI: `kiln template build --from-oci`
/// registers it with the image's env, and `kiln run --template` boots it.
#[test]
fn kiln_template_build_from_oci_then_kiln_run() {
    let dir = std::env::temp_dir().join(format!("kiln-e2e-oci-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("layout")).expect("dir");
    oci_layout(&dir.join("layout"), &layers());
    let state = dir.join("state");
    let kiln = |args: &[&str]| {
        let out = std::process::Command::new(kiln_e2e::artifact("bin/kiln"))
            .args(args)
            .output()
            .expect("run kiln");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let state_arg = state.to_str().expect("utf-8 path");
    let layout = dir.join("layout");
    let (code, text) = kiln(&[
        "template",
        "build",
        "oci-t",
        "--from-oci",
        layout.to_str().expect("utf-8 path"),
        "--mem-mib",
        "256",
        "--env",
        "FROM_CLI=yes",
        "--state-dir",
        state_arg,
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = kiln(&["template", "show", "oci-t", "--state-dir", state_arg]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("source:       oci:"), "{text}");
    let (code, text) = kiln(&[
        "run",
        "--template",
        "oci-t",
        "--state-dir",
        state_arg,
        "--",
        "sh",
        "-c",
        "echo $FROM_CLI; busybox cat /opaque/upper",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("yes\n"), "{text}");
    // A broken source is refused with the reason, and nothing registered.
    std::fs::remove_file(layout.join("index.json")).expect("rm index");
    let (code, text) = kiln(&[
        "template",
        "build",
        "oci-u",
        "--from-oci",
        layout.to_str().expect("utf-8 path"),
        "--state-dir",
        state_arg,
    ]);
    assert_ne!(code, Some(0), "{text}");
    let (_, listed) = kiln(&["template", "ls", "--state-dir", state_arg]);
    assert!(!listed.contains("oci-u"), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}
