//! `kiln template build --debian-packages`: runs the runtime image builder
//! (`tools/build-runtime-image`) with another package list.
//!
//! The builder is found on disk, not embedded: it is a tree of scripts and
//! lists (the resolver, apt helpers, maintainer steps, the rootfs overlay)
//! that needs apt and dpkg on the host anyway, so it ships with the
//! repository's tools: `$KILN_TOOLS`, else `tools/` of the checkout this
//! binary was built in, else `tools/` next to the staged artifacts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The builder's name under the tools directory.
const BUILDER: &str = "build-runtime-image";
/// Longest build (downloads included).
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Checks a Debian package name (policy 5.6.1), so nothing else reaches
/// apt's command line.
fn check_package(name: &str) -> Result<()> {
    let ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !ok {
        bail!("{name:?} is not a Debian package name (a-z, 0-9, '+', '-', '.'; at least 2 characters)");
    }
    Ok(())
}

/// Checks pip requirements (`name[==version]`) and npm packages
/// (`[@scope/]name[@version]`): letters, digits and the punctuation of
/// versions only, so nothing else reaches the installers' command lines.
fn check_installables(what: &str, items: &[String], extra: &str) -> Result<()> {
    for item in items {
        let ok = item
            .starts_with(|c: char| c.is_ascii_alphanumeric() || (c == '@' && what == "npm"))
            && item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c));
        if !ok {
            bail!("{item:?} is not a {what} package name (with an optional version)");
        }
    }
    Ok(())
}

/// The builder script.
fn builder() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("KILN_TOOLS") {
        candidates.push(PathBuf::from(dir).join(BUILDER));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/kiln in a checkout; bin/kiln in the artifacts.
        for up in ["../..", ".."] {
            if let Some(dir) = exe.parent() {
                candidates.push(dir.join(up).join("tools").join(BUILDER));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the image builder {BUILDER} was not found (looked in: {}); set KILN_TOOLS to the \
             tools/ directory of a kiln checkout",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Builds an erofs image of `packages` and their dependencies (on top of
/// the base every image has: a shell, coreutils, libc), with `pip` and
/// `npm` packages installed by the image's own pip and npm; returns its
/// path in the build cache.
pub fn debian_packages(
    name: &str,
    packages: &[String],
    pip: &[String],
    npm: &[String],
) -> Result<PathBuf> {
    if packages.is_empty() {
        bail!("--debian-packages needs at least one package");
    }
    for p in packages {
        check_package(p)?;
    }
    check_installables("pip", pip, "=<>!~*+")?;
    check_installables("npm", npm, "@/^~*+")?;
    if !pip.is_empty() && !packages.iter().any(|p| p == "python3-pip") {
        bail!("--pip needs python3-pip in --debian-packages (the image's own pip installs them)");
    }
    if !npm.is_empty() && !packages.iter().any(|p| p == "npm") {
        bail!("--npm needs npm in --debian-packages (the image's own npm installs them)");
    }
    let script = builder()?;
    eprintln!(
        "kiln: building the image of {name} with {}",
        script.display()
    );
    let mut child = Command::new(&script)
        .env("KILN_IMAGE_PACKAGES", packages.join(","))
        .env("KILN_IMAGE_NAME", format!("{name}.erofs"))
        .env("KILN_IMAGE_PIP", pip.join(","))
        .env("KILN_IMAGE_NPM", npm.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    let mut stdout = child.stdout.take().context("the builder's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the builder")? {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the image build took longer than {BUILD_TIMEOUT:?}; stopped it");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("the image build failed ({status}); its log is above");
    }
    let image = out.lines().last().map(PathBuf::from).unwrap_or_default();
    if !Path::new(&image).is_file() {
        bail!("the image builder printed no image path (got {out:?})");
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::{check_installables, check_package};

    #[test]
    fn pip_and_npm_names() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        check_installables(
            "pip",
            &v(&["requests", "numpy==1.26.4", "a_b.c-d>=2"]),
            "=<>!~*+",
        )
        .expect("pip");
        check_installables(
            "npm",
            &v(&["is-number", "@types/node@20.1.0", "x@^1"]),
            "@/^~*+",
        )
        .expect("npm");
        for bad in ["", "-r", "x;y", "a b", "$(x)", "../p"] {
            assert!(
                check_installables("pip", &v(&[bad]), "=<>!~*+").is_err(),
                "{bad:?}"
            );
            assert!(
                check_installables("npm", &v(&[bad]), "@/^~*+").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn package_names() {
        for ok in ["jq", "libc6", "g++", "python3.11", "node-typescript"] {
            check_package(ok).expect(ok);
        }
        for bad in ["", "a", "-o", "Foo", "a b", "x;rm", "a=1.0", "a/b"] {
            assert!(check_package(bad).is_err(), "{bad:?}");
        }
    }
}
