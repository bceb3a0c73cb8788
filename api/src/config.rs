//! Configuration of the core (and `kiln serve`): templates, pools, limits,
//! timeouts. Read from TOML; every field has a default, so an empty file
//! (or none) gives a working daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Range;

/// Everything the core needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State directory: SQLite database, lock file, VM run directories.
    pub state_dir: PathBuf,
    /// Template used when a create names none.
    pub default_template: String,
    /// What starts VMs.
    pub launcher: LauncherConfig,
    /// Templates by name; the built-in ones (python-node, minimal) are
    /// added unless a template of that name is given.
    pub templates: BTreeMap<String, TemplateConfig>,
    /// Host limits.
    pub limits: LimitsConfig,
    /// Timeouts.
    pub timeouts: TimeoutsConfig,
    /// Pool behaviour.
    pub pool: PoolConfig,
    /// The HTTP server (`kiln serve`).
    pub server: ServerConfig,
    /// The audit trail's retention.
    pub audit: AuditConfig,
    /// Limits of the sandboxes' egress proxies.
    pub egress: EgressConfig,
}

/// What starts VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LauncherConfig {
    /// `kiln-vmm` (production): one microVM per process.
    KilnVmm {
        /// The binary (default: next to this program, or `$KILN_ARTIFACTS`).
        #[serde(default)]
        vmm: Option<PathBuf>,
    },
    /// A real `kiln-agent --listen-unix` process on the host instead of a
    /// VM (tests and development: no isolation at all).
    HostAgent {
        /// The agent binary.
        agent: PathBuf,
    },
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig::KilnVmm { vmm: None }
    }
}

/// One template: the pool key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// Built-in template to start from (`python-node` or `minimal`) for
    /// paths not given here.
    #[serde(default)]
    pub base: Option<String>,
    /// Guest kernel.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Runtime image (read-only /dev/vda).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// vCPUs.
    #[serde(default = "one")]
    pub vcpus: u8,
    /// Guest memory, MiB.
    #[serde(default = "mem_default")]
    pub mem_mib: u32,
    /// Extra guest kernel command line.
    #[serde(default)]
    pub kernel_args: String,
    /// Guest RAM on transparent huge pages when the host has them (the
    /// default): faster cold boots, but a booted VM keeps more memory
    /// resident. Off trades boot time for memory in pools of booted VMs;
    /// clones are not affected.
    #[serde(default = "yes")]
    pub huge_pages: bool,
    /// A writable disk of this many MiB per sandbox (a sparse file on the
    /// host, only written blocks take space) as its writable layer over
    /// the image, instead of a tmpfs in guest memory (`kiln.overlay_mib`).
    /// Needs an image.
    #[serde(default)]
    pub disk_mib: Option<u32>,
    /// VMs to keep ready.
    #[serde(default)]
    pub pool_target: u32,
    /// The egress allowlist of its sandboxes unless a create narrows it
    /// (none: no network).
    #[serde(default)]
    pub egress: Option<crate::model::EgressSpec>,
}

fn one() -> u8 {
    1
}

fn yes() -> bool {
    true
}

fn mem_default() -> u32 {
    256
}

/// Host limits: beyond them a VM start is refused (429 `host_capacity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most live VMs (booting, pooled, in sandboxes).
    pub max_vms: u32,
    /// Most guest memory committed to live VMs, MiB (default: 3/4 of the
    /// host's RAM).
    pub max_memory_mib: u64,
    /// Most VMs booting at once.
    pub max_parallel_boots: u32,
    /// Largest upload through the files API, bytes.
    pub max_file_bytes: u64,
    /// Largest JSON request body, bytes.
    pub max_request_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_vms: 64,
            max_memory_mib: host_memory_mib() * 3 / 4,
            max_parallel_boots: 2,
            max_file_bytes: 1 << 30,
            max_request_bytes: 16 << 20,
        }
    }
}

fn host_memory_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(4096, |kib| kib / 1024)
}

/// The timeout model: a sandbox ends at its TTL (counted from ready) or
/// after its idle timeout without activity (any API call on it, or a
/// running exec), whichever comes first; each exec has its own timeout.
/// An `expiring` event goes out `expiring_notice_secs` before the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Default sandbox TTL, seconds.
    pub default_ttl_secs: u64,
    /// Longest sandbox TTL, seconds.
    pub max_ttl_secs: u64,
    /// Default idle timeout, seconds.
    pub default_idle_secs: u64,
    /// Longest idle timeout, seconds.
    pub max_idle_secs: u64,
    /// Default exec timeout, ms.
    pub default_exec_timeout_ms: u64,
    /// Longest exec timeout, ms.
    pub max_exec_timeout_ms: u64,
    /// Notice before expiry, seconds.
    pub expiring_notice_secs: u64,
    /// How long tombstones answer 410, seconds.
    pub tombstone_retention_secs: u64,
    /// How long a VM may take to boot, seconds.
    pub boot_timeout_secs: u64,
    /// On SIGTERM: how long running execs may finish, seconds.
    pub drain_timeout_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            default_ttl_secs: 3600,
            max_ttl_secs: 86_400,
            default_idle_secs: 900,
            max_idle_secs: 86_400,
            default_exec_timeout_ms: 600_000,
            max_exec_timeout_ms: 3_600_000,
            expiring_notice_secs: 30,
            tombstone_retention_secs: 86_400,
            boot_timeout_secs: 120,
            drain_timeout_secs: 30,
        }
    }
}

impl TimeoutsConfig {
    /// Allowed TTLs.
    pub fn ttl(&self) -> Range {
        Range {
            min: 1,
            max: self.max_ttl_secs,
            default: self.default_ttl_secs,
        }
    }

    /// Allowed idle timeouts.
    pub fn idle(&self) -> Range {
        Range {
            min: 1,
            max: self.max_idle_secs,
            default: self.default_idle_secs,
        }
    }

    /// Allowed exec timeouts.
    pub fn exec(&self) -> Range {
        Range {
            min: 1,
            max: self.max_exec_timeout_ms,
            default: self.default_exec_timeout_ms,
        }
    }
}

/// Pool behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// A pooled VM older than this is replaced by a fresh one, seconds.
    pub max_age_secs: u64,
    /// First backoff after a failed boot, ms (doubles per failure).
    pub backoff_base_ms: u64,
    /// Longest backoff, ms.
    pub backoff_max_ms: u64,
    /// How often the reconciler checks every pool, ms.
    pub reconcile_interval_ms: u64,
    /// Refill pools (and serve cold creates) by restoring clones of a
    /// snapshot taken once per template, instead of booting each VM.
    pub from_snapshot: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_age_secs: 1800,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            reconcile_interval_ms: 1000,
            from_snapshot: true,
        }
    }
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Unix socket (default: `<state_dir>/kiln.sock`).
    pub socket: Option<PathBuf>,
    /// Socket permission bits (default 0600: owner only).
    pub socket_mode: u32,
    /// Group (name or gid) that owns the socket; with `socket_mode` 0660
    /// its members may connect.
    pub socket_group: Option<String>,
    /// A TCP address to serve the API on as well (`127.0.0.1:PORT`);
    /// every request there needs a sandbox token.
    pub listen: Option<std::net::SocketAddr>,
    /// Allow `listen` on an address other than loopback.
    pub listen_any: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: None,
            socket_mode: 0o600,
            socket_group: None,
            listen: None,
            listen_any: false,
        }
    }
}

/// How much of the audit trail is kept: records past either bound are
/// pruned every `prune_interval_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Most records kept (the newest).
    pub max_rows: u64,
    /// Oldest record kept, seconds.
    pub max_age_secs: u64,
    /// How often the bounds are applied, seconds.
    pub prune_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_rows: 1_000_000,
            max_age_secs: 90 * 86_400,
            prune_interval_secs: 60,
        }
    }
}

/// Limits of each sandbox's egress proxy (for sandboxes with an
/// allowlist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Most connections a sandbox may have open at once.
    pub max_connections: u32,
    /// Most bytes a sandbox may move through its proxy, both ways, over
    /// its life (per daemon run).
    pub max_bytes: u64,
    /// How long a connection may take to send its request head, seconds.
    pub header_timeout_secs: u64,
    /// How long resolving and connecting upstream may take, seconds.
    pub connect_timeout_secs: u64,
    /// A connection idle both ways this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// DANGEROUS, for tests only: address ranges the proxies connect to
    /// although they are loopback, private or link-local (for example
    /// `["127.0.0.1/32"]` for a test server on the host's loopback). Every
    /// sandbox with an allowlist naming a host that resolves there reaches
    /// it. Empty (the default) refuses every inside address.
    pub allow_private: Vec<ipnet::IpNet>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            max_connections: 64,
            max_bytes: 1 << 30,
            header_timeout_secs: 10,
            connect_timeout_secs: 10,
            idle_timeout_secs: 300,
            allow_private: Vec::new(),
        }
    }
}

/// The default state directory: `$KILN_STATE_DIR`, else
/// `/var/lib/kiln` for root, else `$XDG_STATE_HOME/kiln` or
/// `~/.local/state/kiln`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("kiln");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/state/kiln")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: default_state_dir(),
            default_template: crate::template::DEFAULT_TEMPLATE.to_string(),
            launcher: LauncherConfig::default(),
            templates: BTreeMap::new(),
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            pool: PoolConfig::default(),
            server: ServerConfig::default(),
            audit: AuditConfig::default(),
            egress: EgressConfig::default(),
        }
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid (unknown keys included).
    #[error("invalid config {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.timeouts;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(1..=t.max_ttl_secs).contains(&t.default_ttl_secs) {
            return bad("timeouts.default_ttl_secs must be in 1..=max_ttl_secs");
        }
        if !(1..=t.max_idle_secs).contains(&t.default_idle_secs) {
            return bad("timeouts.default_idle_secs must be in 1..=max_idle_secs");
        }
        if !(1..=t.max_exec_timeout_ms).contains(&t.default_exec_timeout_ms) {
            return bad("timeouts.default_exec_timeout_ms must be in 1..=max_exec_timeout_ms");
        }
        if t.boot_timeout_secs == 0 {
            return bad("timeouts.boot_timeout_secs must be at least 1");
        }
        if self.limits.max_parallel_boots == 0 {
            return bad("limits.max_parallel_boots must be at least 1");
        }
        if self.pool.backoff_base_ms == 0 || self.pool.backoff_max_ms < self.pool.backoff_base_ms {
            return bad("pool.backoff_base_ms must be at least 1 and at most backoff_max_ms");
        }
        if self.pool.reconcile_interval_ms == 0 {
            return bad("pool.reconcile_interval_ms must be at least 1");
        }
        if self.server.socket_mode & !0o777 != 0 {
            return bad("server.socket_mode must be permission bits (at most 0o777)");
        }
        if let Some(addr) = self.server.listen {
            if !addr.ip().is_loopback() && !self.server.listen_any {
                return Err(ConfigError::Invalid(format!(
                    "server.listen {addr} is not a loopback address: the API would be \
                     plain HTTP on the network, bearer tokens readable by anyone on the \
                     path; put TLS in front and set listen_any (--listen-any) to allow it"
                )));
            }
        }
        for (name, t) in &self.templates {
            if t.disk_mib
                .is_some_and(|mib| mib < crate::vm_process::disk::MIN_DISK_MIB)
            {
                return Err(ConfigError::Invalid(format!(
                    "templates.{name}.disk_mib must be at least {} MiB",
                    crate::vm_process::disk::MIN_DISK_MIB
                )));
            }
            if t.disk_mib.is_some() && t.image.is_none() && t.base.as_deref() != Some("python-node")
            {
                return Err(ConfigError::Invalid(format!(
                    "templates.{name}.disk_mib needs an image (the disk is the writable layer over it)"
                )));
            }
        }
        if self.audit.max_rows == 0 || self.audit.prune_interval_secs == 0 {
            return bad("audit.max_rows and audit.prune_interval_secs must be at least 1");
        }
        let e = &self.egress;
        if e.max_connections == 0
            || e.header_timeout_secs == 0
            || e.connect_timeout_secs == 0
            || e.idle_timeout_secs == 0
        {
            return bad("egress.max_connections and the egress timeouts must be at least 1");
        }
        for (name, tc) in &self.templates {
            if let Some(spec) = &tc.egress {
                crate::egress::Allowlist::parse(spec)
                    .map_err(|e| ConfigError::Invalid(format!("template {name}: {e}")))?;
            }
            if name.is_empty() || name.len() > 64 || !name.chars().all(valid_name_char) {
                return Err(ConfigError::Invalid(format!(
                    "template name {name:?}: use 1-64 of [A-Za-z0-9._-]"
                )));
            }
            if tc.vcpus == 0 || tc.vcpus > kiln_vmm::config::MAX_VCPUS {
                return Err(ConfigError::Invalid(format!(
                    "template {name}: vcpus must be 1..={}",
                    kiln_vmm::config::MAX_VCPUS
                )));
            }
            if u64::from(tc.mem_mib) < kiln_vmm::config::MIN_MEM_MIB {
                return Err(ConfigError::Invalid(format!(
                    "template {name}: mem_mib must be at least {}",
                    kiln_vmm::config::MIN_MEM_MIB
                )));
            }
        }
        Ok(())
    }

    /// The unix socket of `kiln serve`.
    pub fn socket_path(&self) -> PathBuf {
        self.server
            .socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("kiln.sock"))
    }
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default_and_unknown_keys_are_refused() {
        let c = Config::from_toml("").expect("empty config");
        assert_eq!(c.timeouts, TimeoutsConfig::default());
        assert_eq!(c.server.socket_mode, 0o600);
        let err = Config::from_toml("bogus = 1").expect_err("unknown key");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::from_toml("[limits]\nmax_vm = 3").expect_err("typo");
        assert!(err.to_string().contains("max_vm"), "{err}");
    }

    #[test]
    fn templates_pools_and_launcher_from_toml() {
        let c = Config::from_toml(
            r#"
            state_dir = "/tmp/k"
            [launcher]
            kind = "host-agent"
            agent = "/bin/kiln-agent"
            [templates.tiny]
            base = "minimal"
            mem_mib = 128
            pool_target = 3
            [limits]
            max_vms = 5
            max_memory_mib = 1024
            "#,
        )
        .expect("config");
        assert_eq!(
            c.launcher,
            LauncherConfig::HostAgent {
                agent: "/bin/kiln-agent".into()
            }
        );
        let t = &c.templates["tiny"];
        assert_eq!((t.mem_mib, t.pool_target, t.vcpus), (128, 3, 1));
        assert!(t.huge_pages, "huge pages unless a template turns them off");
        let dense = Config::from_toml("[templates.dense]\nbase = \"minimal\"\nhuge_pages = false")
            .expect("config");
        assert!(!dense.templates["dense"].huge_pages);
        assert_eq!(c.limits.max_vms, 5);
        assert_eq!(c.socket_path(), PathBuf::from("/tmp/k/kiln.sock"));
    }

    #[test]
    fn tcp_listener_loopback_unless_any_is_allowed() {
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:7070\"").expect("loopback");
        assert_eq!(
            c.server.listen,
            Some("127.0.0.1:7070".parse().expect("addr"))
        );
        Config::from_toml("[server]\nlisten = \"[::1]:7070\"").expect("v6 loopback");
        Config::from_toml("[server]\nlisten = \"0.0.0.0:7070\"\nlisten_any = true")
            .expect("explicitly allowed");
        let c = Config::from_toml("[audit]\nmax_rows = 5\nmax_age_secs = 60").expect("audit");
        assert_eq!((c.audit.max_rows, c.audit.max_age_secs), (5, 60));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (toml, needle) in [
            ("[timeouts]\ndefault_ttl_secs = 0", "default_ttl_secs"),
            ("[timeouts]\nmax_ttl_secs = 10", "default_ttl_secs"),
            ("[limits]\nmax_parallel_boots = 0", "max_parallel_boots"),
            ("[templates.\"a b\"]", "template name"),
            ("[templates.t]\nvcpus = 0", "vcpus"),
            ("[templates.t]\nmem_mib = 1", "mem_mib"),
            ("[server]\nsocket_mode = 4095", "socket_mode"),
            ("[server]\nlisten = \"0.0.0.0:8080\"", "not a loopback"),
            ("[server]\nlisten = \"[::]:8080\"", "listen_any"),
            ("[audit]\nmax_rows = 0", "max_rows"),
            ("[egress]\nmax_connections = 0", "max_connections"),
            (
                "[templates.t]\negress = { allow = [\"*.com\"] }",
                "invalid egress name",
            ),
            (
                "[templates.t]\negress = { cidrs = [\"10.0.0.0/33\"] }",
                "invalid egress CIDR",
            ),
        ] {
            let err = Config::from_toml(toml).expect_err(toml);
            assert!(err.to_string().contains(needle), "{toml}: {err}");
        }
    }
}
