//! Request paths: validation and the parent / final-name split.
//!
//! Nothing here touches the file system. The kernel resolves the result
//! with `RESOLVE_IN_ROOT` (see `root`), so `..`, absolute paths and
//! symlinks can never leave the files root; this module only bounds sizes,
//! anchors relative paths at the sandbox home and finds the last component
//! for the calls that take a directory fd and a name (mkdirat, unlinkat,
//! renameat, the upload's temp file).

use std::ffi::{CStr, CString};

use thiserror::Error;

use kiln_agent::protocol::files::{MAX_NAME, MAX_PATH};

/// A path a request may not use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    /// Empty string.
    #[error("path is empty")]
    Empty,
    /// Longer than [`MAX_PATH`].
    #[error("path is {0} bytes, at most {MAX_PATH} allowed")]
    TooLong(usize),
    /// A component longer than [`MAX_NAME`].
    #[error("a path component is longer than {MAX_NAME} bytes")]
    NameTooLong,
    /// Contains NUL.
    #[error("path contains a NUL byte")]
    Nul,
    /// The operation needs a final name, but the path is the root or ends
    /// in `.` or `..`.
    #[error("path must end in a file or directory name")]
    NoName,
}

/// A validated path, absolute inside the files root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqPath {
    full: CString,
    /// Parent directory and final component, when the path ends in a name.
    split: Option<(CString, CString)>,
}

impl ReqPath {
    /// Validates `path`; relative paths start at `home` (absolute, inside
    /// the root).
    pub fn parse(path: &str, home: &str) -> Result<Self, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH {
            return Err(PathError::TooLong(path.len()));
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        if path.split('/').any(|c| c.len() > MAX_NAME) {
            return Err(PathError::NameTooLong);
        }
        let full = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", home.trim_end_matches('/'))
        };
        let trimmed = full.trim_end_matches('/');
        let split = trimmed.rfind('/').and_then(|i| {
            let name = &trimmed[i + 1..];
            if name.is_empty() || name == "." || name == ".." {
                return None;
            }
            let parent = if i == 0 { "/" } else { &trimmed[..i] };
            Some((cstring(parent), cstring(name)))
        });
        Ok(Self {
            full: cstring(&full),
            split,
        })
    }

    /// The whole path.
    pub fn full(&self) -> &CStr {
        &self.full
    }

    /// Parent directory and final name, or [`PathError::NoName`].
    pub fn split(&self) -> Result<(&CStr, &CStr), PathError> {
        self.split
            .as_ref()
            .map(|(p, n)| (p.as_c_str(), n.as_c_str()))
            .ok_or(PathError::NoName)
    }

    /// The final name, if the path has one.
    pub fn name(&self) -> Option<&CStr> {
        self.split.as_ref().map(|(_, n)| n.as_c_str())
    }
}

/// `s` has no NUL (checked by `parse`).
fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "/home/sandbox";

    fn split(p: &str) -> Option<(String, String)> {
        let r = ReqPath::parse(p, HOME).expect("valid");
        r.split().ok().map(|(a, b)| {
            (
                a.to_str().expect("utf8").to_owned(),
                b.to_str().expect("utf8").to_owned(),
            )
        })
    }

    fn full(p: &str) -> String {
        let r = ReqPath::parse(p, HOME).expect("valid");
        r.full().to_str().expect("utf8").to_owned()
    }

    #[test]
    fn relative_paths_start_at_home() {
        assert_eq!(full("a b/ü"), "/home/sandbox/a b/ü");
        assert_eq!(full("/etc/x"), "/etc/x");
        assert_eq!(full("../../etc/passwd"), "/home/sandbox/../../etc/passwd");
        assert_eq!(
            split("x.txt"),
            Some(("/home/sandbox".into(), "x.txt".into()))
        );
    }

    #[test]
    fn split_finds_the_last_name() {
        assert_eq!(split("/a"), Some(("/".into(), "a".into())));
        assert_eq!(split("/a/b//"), Some(("/a".into(), "b".into())));
        assert_eq!(split("//a"), Some(("/".into(), "a".into())));
        assert_eq!(split("/a/../b"), Some(("/a/..".into(), "b".into())));
        for no_name in ["/", "//", "/a/..", "/a/.", ".", "..", "x/../"] {
            assert_eq!(split(no_name), None, "{no_name}");
            let r = ReqPath::parse(no_name, HOME).expect("valid");
            assert_eq!(r.split(), Err(PathError::NoName));
        }
    }

    #[test]
    fn hostile_paths_are_rejected() {
        assert_eq!(ReqPath::parse("", HOME), Err(PathError::Empty));
        assert_eq!(ReqPath::parse("a\0b", HOME), Err(PathError::Nul));
        let long = "a/".repeat(MAX_PATH / 2 + 1);
        assert_eq!(
            ReqPath::parse(&long, HOME),
            Err(PathError::TooLong(long.len()))
        );
        let name = "n".repeat(MAX_NAME + 1);
        assert_eq!(ReqPath::parse(&name, HOME), Err(PathError::NameTooLong));
        assert!(ReqPath::parse(&"n".repeat(MAX_NAME), HOME).is_ok());
    }
}
