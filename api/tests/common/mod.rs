//! Shared by the host-level tests: a real `kiln-agent --listen-unix`
//! process stands in for each VM (the host-agent launcher), so the core,
//! the HTTP API and the client run against the real agent and protocol.

#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::config::{Config, LauncherConfig, TemplateConfig};

/// The `kiln-agent` binary (built on first use when `cargo test -p kiln`
/// did not build it).
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test exe");
            let target = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>")
                .to_path_buf();
            let agent = target.join("kiln-agent");
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "kiln-agent",
                    "--bin",
                    "kiln-agent",
                ])
                .status()
                .expect("cargo build kiln-agent");
            assert!(status.success(), "building kiln-agent failed");
            assert!(agent.is_file(), "{} missing", agent.display());
            agent
        })
        .clone()
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A config whose VMs are host agents: template `host` (pool of
/// `pool_target`), small limits, fast backoff.
pub fn host_config(state_dir: &Path, pool_target: u32) -> Config {
    let mut c = Config {
        state_dir: state_dir.to_path_buf(),
        default_template: "host".into(),
        launcher: LauncherConfig::HostAgent {
            agent: agent_binary(),
        },
        ..Config::default()
    };
    c.templates.insert(
        "host".into(),
        TemplateConfig {
            base: None,
            kernel: None,
            initramfs: None,
            image: None,
            vcpus: 1,
            mem_mib: 128,
            kernel_args: String::new(),
            pool_target,
        },
    );
    c.limits.max_vms = 8;
    c.limits.max_memory_mib = 8 * 128;
    c.pool.backoff_base_ms = 100;
    c.pool.backoff_max_ms = 400;
    c.pool.reconcile_interval_ms = 50;
    c.timeouts.boot_timeout_secs = 20;
    c
}
