//! The serde description of one VM: what the daemon writes and `kiln-vmm
//! --config` reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Smallest guest RAM kiln boots.
pub const MIN_MEM_MIB: u64 = 64;
/// Largest guest RAM kiln accepts (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Most vCPUs per VM: the guest kernel is built with `NR_CPUS=32`.
pub const MAX_VCPUS: u8 = 32;

/// Errors from checking a [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    /// Memory size out of range.
    #[error("guest memory must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} MiB, got {0} MiB")]
    Memory(u64),
    /// The vsock CID is reserved.
    #[error("vsock guest cid must be at least 3, got {0}")]
    GuestCid(u32),
    /// More drives than virtio-mmio windows.
    #[error("at most {MAX_DRIVES} drives, got {0}")]
    Drives(usize),
    /// The CPU quota is zero or more than every vCPU kiln allows.
    #[error("cpu quota must be between 1 and {MAX_CPU_QUOTA_PERCENT} percent, got {0}")]
    CpuQuota(u32),
    /// The jail uid or gid is root's.
    #[error("the jail uid and gid must not be 0 (root)")]
    JailRoot,
    /// The cgroup parent is absolute or climbs out of the cgroup mount.
    #[error("cgroup parent must be a relative path without '..', got {0:?}")]
    CgroupParent(PathBuf),
}

/// Most virtio-blk drives per VM (the virtio-mmio windows after vsock and rng).
pub const MAX_DRIVES: usize = 16;

/// A virtio-blk disk backed by a host file; the guest sees drives in order
/// as /dev/vda, /dev/vdb, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Backing file (or block device); its size is rounded down to 512-byte sectors.
    pub path: PathBuf,
    /// Open the file read-only and tell the guest the disk is read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Host side of the guest's virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Unix socket the host connects to (`CONNECT <port>\n`).
    pub uds_path: PathBuf,
    /// The guest's context id (3 or more).
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
}

fn default_cid() -> u32 {
    3
}

fn default_vcpus() -> u8 {
    1
}

fn default_mem_mib() -> u64 {
    256
}

fn default_true() -> bool {
    true
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an uncompressed ELF `vmlinux` (PVH entry) or a bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs (newc cpio, optionally compressed).
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line, appended after kiln's own arguments.
    #[serde(default)]
    pub cmdline_extra: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u64,
    /// Back guest RAM with transparent huge pages where the host has them
    /// (on by default): a faster boot, more RSS per booted VM (touched
    /// memory is resident 2 MiB at a time). A restore maps its snapshot
    /// file and is not affected.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub huge_pages: bool,
    /// When set, a COM1 serial port whose output goes to this file (and the
    /// kernel console on it). Off by default: every byte is a VM exit.
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// When set, a virtio-vsock device with this unix-socket host side.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Whether the boot-timer device is present.
    #[serde(default = "default_true")]
    pub boot_timer: bool,
    /// virtio-blk disks, attached after vsock and rng.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// How `kiln-vmm` confines itself (on by default).
    #[serde(default)]
    pub jail: JailConfig,
    /// When set, a control socket that takes snapshot requests
    /// (`kiln_vmm::snapshot::control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlConfig>,
    /// When set, the VM resumes from this snapshot directory instead of
    /// booting the kernel: vCPUs, memory size and devices must match the
    /// snapshot's; the vsock socket path and drive files may differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<PathBuf>,
}

/// The VM's control socket and where its snapshots go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket taking one JSON request per line.
    pub socket: PathBuf,
    /// Directory a snapshot is written to (an existing directory; its
    /// `vm.state` and `vm.mem` are replaced).
    pub snapshot_dir: PathBuf,
}

/// The uid and gid `kiln-vmm` switches to when started as root: an id no
/// account should own (Debian leaves 64000 unassigned on a fresh system).
pub const DEFAULT_JAIL_ID: u32 = 64_000;
/// Memory the VMM itself may use beyond guest RAM before its cgroup's
/// `memory.max` stops it: thread stacks, virtio buffers, KVM's page
/// tables and the page cache of its drives (reclaimable).
pub const DEFAULT_VMM_MEMORY_ALLOWANCE_MIB: u64 = 64;
/// Most CPU quota accepted: all of [`MAX_VCPUS`] CPUs.
pub const MAX_CPU_QUOTA_PERCENT: u32 = MAX_VCPUS as u32 * 100;

/// How `kiln-vmm` confines itself before the guest runs; see
/// `kiln_vmm::jail`. Pieces the host cannot give are logged at warn and
/// left out; `kiln doctor` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    /// Master switch: namespaces, private root, unprivileged ids,
    /// `no_new_privs`, rlimits, cgroup and seccomp. Off only for debugging.
    pub enabled: bool,
    /// Per-thread seccomp filters (only when `enabled`).
    pub seccomp: bool,
    /// uid the VMM runs as when started as root (otherwise it keeps the
    /// caller's uid and drops every capability).
    pub uid: u32,
    /// gid the VMM runs as when started as root.
    pub gid: u32,
    /// Parent of the per-VM cgroup, relative to the cgroup v2 mount; created
    /// when missing.
    pub cgroup_parent: PathBuf,
    /// `memory.max` is guest RAM plus this many MiB.
    pub vmm_memory_allowance_mib: u64,
    /// `cpu.max` quota in percent of one CPU (200 = two CPUs); none by default.
    pub cpu_quota_percent: Option<u32>,
    /// Self-test of the seccomp report: once the guest's userspace starts,
    /// vCPU 0 calls a syscall its filter forbids, so the VMM dies with
    /// "seccomp violation". Only the host sets it (a flag or the config
    /// file); nothing a guest does can.
    #[serde(skip_serializing_if = "is_false")]
    pub test_seccomp_violation: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Written only when off, so a config with the default reads in older
/// kiln-vmm builds too (a benchmark's baseline).
fn is_true(b: &bool) -> bool {
    *b
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            enabled: true,
            seccomp: true,
            uid: DEFAULT_JAIL_ID,
            gid: DEFAULT_JAIL_ID,
            cgroup_parent: PathBuf::from("kiln"),
            vmm_memory_allowance_mib: DEFAULT_VMM_MEMORY_ALLOWANCE_MIB,
            cpu_quota_percent: None,
            test_seccomp_violation: false,
        }
    }
}

impl JailConfig {
    /// Whether the vCPU and device threads install seccomp filters.
    pub fn seccomp_on(&self) -> bool {
        self.enabled && self.seccomp
    }
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            cmdline_extra: String::new(),
            vcpus: default_vcpus(),
            mem_mib: default_mem_mib(),
            huge_pages: true,
            serial_log: None,
            vsock: None,
            boot_timer: true,
            drives: Vec::new(),
            jail: JailConfig::default(),
            control: None,
            restore: None,
        }
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(ConfigError::GuestCid(v.guest_cid));
            }
        }
        if self.drives.len() > MAX_DRIVES {
            return Err(ConfigError::Drives(self.drives.len()));
        }
        if let Some(q) = self.jail.cpu_quota_percent {
            if q == 0 || q > MAX_CPU_QUOTA_PERCENT {
                return Err(ConfigError::CpuQuota(q));
            }
        }
        if self.jail.uid == 0 || self.jail.gid == 0 {
            return Err(ConfigError::JailRoot);
        }
        let parent = &self.jail.cgroup_parent;
        let plain = parent
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || parent.as_os_str().is_empty() {
            return Err(ConfigError::CgroupParent(parent.clone()));
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn json_defaults_and_validation() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.mem_bytes(), 256 << 20);
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","vsock":{"uds_path":"/s"},"vcpus":0}"#).unwrap();
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        let mut c = VmConfig::new("/k");
        c.mem_mib = 63;
        assert_eq!(c.validate(), Err(ConfigError::Memory(63)));
        c.mem_mib = 64;
        c.vsock = Some(VsockConfig {
            uds_path: "/s".into(),
            guest_cid: 2,
        });
        assert_eq!(c.validate(), Err(ConfigError::GuestCid(2)));
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
    }

    #[test]
    fn drives_default_empty_and_are_bounded() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","drives":[{"path":"/a","read_only":true},{"path":"/b"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.drives,
            vec![
                DriveConfig {
                    path: "/a".into(),
                    read_only: true
                },
                DriveConfig {
                    path: "/b".into(),
                    read_only: false
                }
            ]
        );
        let mut c = VmConfig::new("/k");
        let drive = DriveConfig {
            path: "/a".into(),
            read_only: true,
        };
        c.drives = vec![drive; MAX_DRIVES];
        assert_eq!(c.validate(), Ok(()));
        c.drives.push(c.drives[0].clone());
        assert_eq!(c.validate(), Err(ConfigError::Drives(MAX_DRIVES + 1)));
        assert!(serde_json::from_str::<VmConfig>(
            r#"{"kernel":"/k","drives":[{"path":"/a","ro":true}]}"#
        )
        .is_err());
    }

    #[test]
    fn jail_is_on_by_default_and_checked() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        assert!(c.jail.enabled && c.jail.seccomp_on());
        assert_eq!(c.jail.uid, DEFAULT_JAIL_ID);
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","jail":{"enabled":false,"cpu_quota_percent":150}}"#,
        )
        .unwrap();
        assert!(!c.jail.seccomp_on(), "no seccomp without the jail");
        assert_eq!(c.jail.cpu_quota_percent, Some(150));
        assert_eq!(c.jail.cgroup_parent, PathBuf::from("kiln"));
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","jail":{"bogus":1}}"#).is_err());
        let mut c = VmConfig::new("/k");
        c.jail.cpu_quota_percent = Some(0);
        assert_eq!(c.validate(), Err(ConfigError::CpuQuota(0)));
        c.jail.cpu_quota_percent = Some(MAX_CPU_QUOTA_PERCENT + 1);
        assert!(c.validate().is_err());
        c.jail.cpu_quota_percent = Some(MAX_CPU_QUOTA_PERCENT);
        assert_eq!(c.validate(), Ok(()));
        for bad in ["/sys/fs/cgroup", "../up", "a/../b", ""] {
            c.jail.cgroup_parent = PathBuf::from(bad);
            assert!(
                matches!(c.validate(), Err(ConfigError::CgroupParent(_))),
                "{bad:?} accepted"
            );
        }
        c.jail.cgroup_parent = PathBuf::from("kiln/pool-a");
        assert_eq!(c.validate(), Ok(()));
        c.jail.gid = 0;
        assert_eq!(c.validate(), Err(ConfigError::JailRoot));
    }
}
