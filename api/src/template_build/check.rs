//! Whether the guest can run anything in the tree: kiln's agent runs
//! commands through `/bin/sh -c` (and programs directly), so the image
//! needs a `/bin/sh`, or else an entrypoint, that is an x86-64 executable
//! whose ELF interpreter (dynamic loader) is in the image, or a script
//! whose interpreter is. Found at build time, not at the first exec.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use elf::endian::AnyEndian;
use elf::ElfStream;
use rustix::fs::OFlags;

use super::spec::RunConfig;
use super::tree::Tree;
use super::OciBuildError;

/// `PATH` when the image's config sets none (the OCI default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest `#!` line or ELF interpreter path read.
const MAX_INTERP: usize = 4096;
/// Most `#!` interpreters followed.
const MAX_SCRIPT_DEPTH: usize = 4;

/// Fails unless `/bin/sh`, or the entrypoint (or cmd) when there is no
/// shell, can run.
pub(crate) fn runnable(tree: &Tree, run: &RunConfig) -> Result<(), OciBuildError> {
    if tree.open_file(Path::new("bin/sh"), OFlags::RDONLY).is_ok() {
        return executable(tree, Path::new("/bin/sh"), 0);
    }
    let program = run
        .entrypoint
        .iter()
        .chain(run.cmd.iter())
        .flatten()
        .next()
        .ok_or_else(|| {
            OciBuildError::NotRunnable("there is no /bin/sh and no entrypoint or cmd".into())
        })?;
    let path = find_program(tree, program, run).ok_or_else(|| {
        OciBuildError::NotRunnable(format!(
            "there is no /bin/sh, and the entrypoint {program:?} is not in the image"
        ))
    })?;
    executable(tree, &path, 0)
}

/// Where `program` is, searched like `execvp` along the config's `PATH`.
fn find_program(tree: &Tree, program: &str, run: &RunConfig) -> Option<PathBuf> {
    let exists = |p: &Path| tree.open_file(&rel(p), OFlags::RDONLY).is_ok();
    if program.contains('/') {
        let base = Path::new(run.working_dir.as_deref().unwrap_or("/"));
        let p = base.join(program);
        return exists(&p).then_some(p);
    }
    let path = run
        .env
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_absolute() && exists(p))
}

/// Checks that `path` (absolute, in the guest) is an executable the guest
/// can start.
fn executable(tree: &Tree, path: &Path, depth: usize) -> Result<(), OciBuildError> {
    let not = |why: String| OciBuildError::NotRunnable(format!("{}: {why}", path.display()));
    let file = tree
        .open_file(&rel(path), OFlags::RDONLY)
        .map_err(|e| not(format!("cannot open it ({e})")))?;
    let meta = file.metadata().map_err(|e| not(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(not("not an executable file".into()));
    }
    let mut head = [0u8; 4];
    let n = file.read_at(&mut head, 0).map_err(|e| not(e.to_string()))?;
    match &head[..n] {
        [0x7f, b'E', b'L', b'F'] => elf_interpreter(tree, path, file),
        [b'#', b'!', ..] => {
            if depth >= MAX_SCRIPT_DEPTH {
                return Err(not("too many nested #! interpreters".into()));
            }
            let mut line = Vec::new();
            file.take(MAX_INTERP as u64)
                .read_to_end(&mut line)
                .map_err(|e| not(e.to_string()))?;
            let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
            let interp = String::from_utf8_lossy(&line[2..]);
            let interp = interp.split_whitespace().next().unwrap_or_default();
            if !interp.starts_with('/') {
                return Err(not(format!("bad #! interpreter {interp:?}")));
            }
            executable(tree, Path::new(interp), depth + 1)
        }
        _ => Err(not("neither an ELF executable nor a #! script".into())),
    }
}

/// Checks the ELF `file` is x86-64 and that its interpreter is present.
fn elf_interpreter(tree: &Tree, path: &Path, file: File) -> Result<(), OciBuildError> {
    let not = |why: String| OciBuildError::NotRunnable(format!("{}: {why}", path.display()));
    let reader = file.try_clone().map_err(|e| not(e.to_string()))?;
    let elf = ElfStream::<AnyEndian, _>::open_stream(reader)
        .map_err(|e| not(format!("malformed ELF ({e})")))?;
    if elf.ehdr.e_machine != elf::abi::EM_X86_64 {
        return Err(not(format!(
            "built for ELF machine {}, not x86-64",
            elf.ehdr.e_machine
        )));
    }
    let Some(interp) = elf
        .segments()
        .iter()
        .find(|p| p.p_type == elf::abi::PT_INTERP)
    else {
        return Ok(()); // statically linked
    };
    let len = usize::try_from(interp.p_filesz).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_INTERP {
        return Err(not("malformed ELF interpreter entry".into()));
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, interp.p_offset)
        .map_err(|e| not(format!("malformed ELF interpreter entry ({e})")))?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(len);
    let loader = String::from_utf8_lossy(&buf[..end]).into_owned();
    match tree.open_file(&rel(Path::new(&loader)), OFlags::RDONLY) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Ok(()),
        _ => Err(not(format!(
            "it needs the dynamic loader {loader}, which is not in the image (no libc?)"
        ))),
    }
}

/// A guest path relative to the tree's root.
fn rel(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_owned()
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::template_build::tarstream::{EntryMeta, Kind};
    use crate::template_build::tree::LayerState;

    /// A tree holding `files` (path, content, mode) and `links`.
    fn tree(dir: &Path, files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Tree {
        let mut tree = Tree::create(&dir.join("root")).expect("tree");
        let mut state = LayerState::default();
        let entry = |path: &str, kind, mode| EntryMeta {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mtime: 0,
            xattrs: Vec::new(),
        };
        for (path, body, mode) in files {
            let m = entry(path, Kind::File, *mode);
            tree.apply("t", &mut state, &m, &mut &body[..])
                .expect("file");
        }
        for (path, target) in links {
            let m = entry(path, Kind::Symlink(target.as_bytes().to_vec()), 0o777);
            tree.apply("t", &mut state, &m, &mut io::empty())
                .expect("link");
        }
        tree
    }

    /// A 64-byte ELF header for `machine`, without program headers.
    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        h[6] = 1; // version
        h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        h[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        h
    }

    fn check(files: &[(&str, &[u8], u32)], links: &[(&str, &str)], run: RunConfig) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = tree(dir.path(), files, links);
        match runnable(&tree, &run) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_static_x86_64_shell_runs_and_others_do_not() {
        let x86 = elf_header(elf::abi::EM_X86_64);
        let arm = elf_header(elf::abi::EM_AARCH64);
        let none = RunConfig::default();
        assert_eq!(check(&[("bin/sh", &x86, 0o755)], &[], none.clone()), "ok");
        let err = check(&[("bin/sh", &arm, 0o755)], &[], none.clone());
        assert!(
            err.contains("/bin/sh: built for ELF machine 183, not x86-64"),
            "{err}"
        );
        let err = check(&[("bin/sh", &x86, 0o644)], &[], none.clone());
        assert!(err.contains("not an executable file"), "{err}");
        let err = check(&[("bin/sh", b"MZ\0\0", 0o755)], &[], none);
        assert!(
            err.contains("neither an ELF executable nor a #! script"),
            "{err}"
        );
    }

    #[test]
    fn scripts_need_their_interpreter() {
        let x86 = elf_header(elf::abi::EM_X86_64);
        let none = RunConfig::default();
        let files: &[(&str, &[u8], u32)] = &[
            ("bin/sh", b"#!/usr/bin/real-sh -e\n", 0o755),
            ("usr/bin/real-sh", &x86, 0o755),
        ];
        assert_eq!(check(files, &[], none.clone()), "ok");
        let err = check(&files[..1], &[], none);
        assert!(err.contains("/usr/bin/real-sh: cannot open it"), "{err}");
    }

    #[test]
    fn without_a_shell_the_entrypoint_is_found_on_the_image_path() {
        let x86 = elf_header(elf::abi::EM_X86_64);
        let run = |entry: &str| RunConfig {
            env: Some(vec!["PATH=/opt/app/bin".into()]),
            entrypoint: Some(vec![entry.into()]),
            ..RunConfig::default()
        };
        let files: &[(&str, &[u8], u32)] = &[("opt/app/bin/server", &x86, 0o755)];
        assert_eq!(check(files, &[], run("server")), "ok");
        assert_eq!(check(files, &[], run("/opt/app/bin/server")), "ok");
        // A link through an absolute path resolves inside the image.
        assert_eq!(
            check(
                files,
                &[("usr/bin/srv", "/opt/app/bin/server")],
                run("/usr/bin/srv")
            ),
            "ok"
        );
        let err = check(files, &[], run("missing"));
        assert!(
            err.contains("there is no /bin/sh, and the entrypoint \"missing\" is not in the image"),
            "{err}"
        );
        let err = check(files, &[], RunConfig::default());
        assert!(err.contains("no /bin/sh and no entrypoint or cmd"), "{err}");
    }
}
