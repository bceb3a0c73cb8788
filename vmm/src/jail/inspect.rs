//! A jailed kiln-vmm seen from outside, through `/proc`: what tests (and
//! operators) check to know the jail is really there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Namespaces the jail replaces.
pub const NAMESPACES: [&str; 6] = ["user", "mnt", "pid", "ipc", "uts", "net"];

/// The jail-relevant state of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessView {
    /// Its pid (in the viewer's pid namespace).
    pub pid: i32,
    /// `Seccomp:` of every thread, by thread name (2 = filter).
    pub thread_seccomp: Vec<(String, u32)>,
    /// `NoNewPrivs:`.
    pub no_new_privs: u32,
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Capability bounding set.
    pub cap_bnd: u64,
    /// Namespaces (of [`NAMESPACES`]) it shares with the viewer.
    pub shared_namespaces: Vec<&'static str>,
    /// Its cgroup v2 path (`0::/...` in `/proc/PID/cgroup`).
    pub cgroup: Option<String>,
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn number(status: &str, name: &str) -> io::Result<u32> {
    field(status, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(format!("no {name} in status")))
}

fn hex(status: &str, name: &str) -> io::Result<u64> {
    field(status, name)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| bad(format!("no {name} in status")))
}

impl ProcessView {
    /// What is missing for this process to count as a jailed VMM running
    /// as `uid`: every thread under a seccomp filter, `no_new_privs`, no
    /// capability left, the uid, no namespace shared with the viewer.
    /// Empty when it is jailed.
    pub fn jail_gaps(&self, uid: u32) -> Vec<String> {
        let mut gaps = Vec::new();
        for (thread, mode) in &self.thread_seccomp {
            if *mode != 2 {
                gaps.push(format!("thread {thread} has seccomp mode {mode}"));
            }
        }
        if self.no_new_privs != 1 {
            gaps.push("no_new_privs is off".into());
        }
        if self.cap_eff != 0 || self.cap_bnd != 0 {
            gaps.push(format!(
                "capabilities left: effective {:#x}, bounding {:#x}",
                self.cap_eff, self.cap_bnd
            ));
        }
        if self.uids.iter().any(|u| *u != uid) {
            gaps.push(format!("uids {:?}, not {uid}", self.uids));
        }
        if !self.shared_namespaces.is_empty() {
            gaps.push(format!("shares namespaces {:?}", self.shared_namespaces));
        }
        gaps
    }
}

/// Reads process `pid`'s jail state.
pub fn view(pid: i32) -> io::Result<ProcessView> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let status = fs::read_to_string(proc_dir.join("status"))?;
    let mut thread_seccomp = Vec::new();
    for task in fs::read_dir(proc_dir.join("task"))? {
        let task = task?.path();
        let Ok(text) = fs::read_to_string(task.join("status")) else {
            continue; // the thread exited meanwhile
        };
        let name = field(&text, "Name").unwrap_or("?").to_string();
        thread_seccomp.push((name, number(&text, "Seccomp")?));
    }
    let uids = field(&status, "Uid")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut shared_namespaces = Vec::new();
    for ns in NAMESPACES {
        let theirs = fs::read_link(proc_dir.join("ns").join(ns))?;
        let ours = fs::read_link(Path::new("/proc/self/ns").join(ns))?;
        if theirs == ours {
            shared_namespaces.push(ns);
        }
    }
    let cgroup = fs::read_to_string(proc_dir.join("cgroup"))
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        });
    Ok(ProcessView {
        pid,
        thread_seccomp,
        no_new_privs: number(&status, "NoNewPrivs")?,
        uids,
        cap_eff: hex(&status, "CapEff")?,
        cap_bnd: hex(&status, "CapBnd")?,
        shared_namespaces,
        cgroup,
    })
}

/// The children of process `parent` (the VMM, for a supervisor).
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // "pid (comm) state ppid ...": the comm may hold spaces.
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Every file (not directory) in process `pid`'s root, as paths inside it.
pub fn root_files(pid: i32) -> io::Result<Vec<PathBuf>> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from("/")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(root.join(dir.strip_prefix("/").unwrap_or(&dir)))? {
            let entry = entry?;
            let inside = dir.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                dirs.push(inside);
            } else {
                files.push(inside);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_jailed() {
        let me = view(std::process::id() as i32).unwrap();
        assert_eq!(me.shared_namespaces, NAMESPACES.to_vec());
        assert!(me.thread_seccomp.iter().all(|(_, mode)| *mode == 0));
        assert!(!me.uids.is_empty());
        let gaps = me.jail_gaps(u32::MAX);
        assert!(
            gaps.iter().any(|g| g.starts_with("shares namespaces")),
            "{gaps:?}"
        );
        assert!(gaps.iter().any(|g| g.starts_with("uids")), "{gaps:?}");
    }
}
