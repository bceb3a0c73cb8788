//! The embedded core: templates, warm pools, sandboxes, limits, timeouts,
//! state in SQLite. `Kiln::embedded` uses it in the caller's process and
//! `kiln serve` puts HTTP in front of it; each VM is still its own process.
//!
//! Locking: one `std::sync::Mutex<State>`, never held across an await.
//! Background tasks (reconciler, expiry, one exit watcher per VM) stop on
//! [`Core::shutdown`].

mod admission;
mod audit;
mod audit_log;
mod egress;
mod events;
mod exec;
mod exec_control;
mod exec_events;
mod exec_watch;
mod files;
mod foreground;
pub mod launcher;
pub(crate) mod lock;
mod metrics;
mod pool_state;
mod profile;
mod recover;
mod sandboxes;
mod snapshots;
mod store;
mod tasks;
mod templates;
mod timeouts;
mod tokens;
mod vms;
mod warm_up;

pub(crate) use exec_control::MAX_STDIN_WRITE;
pub(crate) use sandboxes::check_env;

#[cfg(feature = "fuzzing")]
pub(crate) use exec::check_exec;
#[cfg(feature = "fuzzing")]
pub(crate) use sandboxes::{check_create, check_patch, check_path};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Actor, TokenKey};
use crate::config::{Config, LauncherConfig};
use crate::model::{Health, Info, PoolInfo};
use crate::{Error, Result};
use admission::{Limits, Usage};
use audit_log::AuditLog;
use events::Events;
use launcher::{HostAgentLauncher, KilnVmmLauncher, Launcher};
use lock::StateLock;
use metrics::Metrics;
use pool_state::{Backoff, PoolState};
use store::{Store, VmPhase};
use templates::TemplateEntry;
use vms::Vm;

/// A live VM and what it is doing.
struct VmSlot {
    vm: Arc<Vm>,
    phase: VmPhase,
}

/// A live sandbox.
struct Sandbox {
    info: crate::model::SandboxInfo,
    vm: Arc<Vm>,
    /// The deadline (ms) whose `expiring` notice went out.
    notice_sent_for: Option<u64>,
    /// Its running execs.
    execs: exec_watch::RunningExecs,
    /// Its egress proxy (with an allowlist); dropping it closes it.
    egress: Option<crate::egress::EgressProxy>,
}

/// Everything behind the lock.
#[derive(Default)]
struct State {
    pools: BTreeMap<String, PoolState<Arc<Vm>>>,
    vms: HashMap<String, VmSlot>,
    sandboxes: HashMap<String, Sandbox>,
    /// VMs admitted (booting, pooled, claimed) and their memory.
    usage: Usage,
    /// Boots in flight, pools and cold boots together.
    booting: u32,
    /// Sandboxes being ended whose tombstone is not written yet, and why
    /// (so a request in between hears of the end, not of no sandbox).
    ending: HashMap<String, crate::error::EndReason>,
    /// Registry templates being removed (a registry reload skips them).
    deleting: std::collections::HashSet<String>,
}

pub(crate) struct Inner {
    config: Config,
    /// Built-in, configured and registry templates (the registry's
    /// reloaded by the reconciler). Locked after `state` when both are.
    templates: RwLock<BTreeMap<String, TemplateEntry>>,
    /// The template registry of the state directory.
    registry: crate::registry::Registry,
    launcher: Arc<dyn Launcher>,
    store: Arc<Store>,
    /// The audit trail (its own database).
    audit: AuditLog,
    /// Signs and checks sandbox tokens.
    token_key: TokenKey,
    events: Events,
    metrics: Metrics,
    state: Mutex<State>,
    /// Pools or capacity changed (wakes creates that wait).
    changed: Notify,
    /// Wakes the reconciler.
    reconcile: Notify,
    /// Wakes the expiry task.
    expiry: Notify,
    limits: Limits,
    backoff: Backoff,
    boot_slots: Semaphore,
    draining: AtomicBool,
    stop: CancellationToken,
    tasks: TaskTracker,
    vm_dir: PathBuf,
    spool_dir: PathBuf,
    /// Template snapshots pools refill from.
    snapshots: snapshots::Snapshots,
    /// Foreground requests in flight (pool refills yield to them).
    foreground: Arc<foreground::Foreground>,
    _lock: StateLock,
}

/// The core; cheap to clone.
#[derive(Clone)]
pub(crate) struct Core {
    inner: Arc<Inner>,
}

fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..16])
}

fn launcher_for(config: &LauncherConfig) -> Result<Arc<dyn Launcher>> {
    Ok(match config {
        LauncherConfig::KilnVmm { vmm } => Arc::new(KilnVmmLauncher {
            vmm: crate::artifacts::vmm_binary(vmm.as_deref())
                .map_err(|e| Error::invalid(e.to_string()))?,
        }),
        LauncherConfig::HostAgent { agent } => Arc::new(HostAgentLauncher {
            agent: agent.clone(),
        }),
    })
}

impl Core {
    /// Opens the state dir (taking its lock), re-adopts the VMs an earlier
    /// daemon left running, and starts the pools.
    pub async fn start(config: Config) -> Result<Self> {
        config
            .validate()
            .map_err(|e| Error::invalid(e.to_string()))?;
        let launcher = launcher_for(&config.launcher)?;
        Self::start_with(config, launcher).await
    }

    /// [`Core::start`] with a launcher of the caller's.
    pub async fn start_with(config: Config, launcher: Arc<dyn Launcher>) -> Result<Self> {
        let dir = &config.state_dir;
        let mkdir = |p: &PathBuf| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|e| Error::Internal(format!("creating {}: {e}", p.display())))
        };
        mkdir(dir)?;
        let lock = StateLock::acquire(dir)?;
        let vm_dir = dir.join("vms");
        let spool_dir = dir.join("spool");
        mkdir(&vm_dir)?;
        mkdir(&spool_dir)?;
        // Downloads spooled by a daemon that died are garbage.
        if let Ok(entries) = std::fs::read_dir(&spool_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let store = Arc::new(Store::open(&dir.join("kiln.db"))?);
        let audit = AuditLog::open(&dir.join("audit.db"))?;
        let token_key = TokenKey::load_or_create(dir)?;
        let needs_files = launcher.needs_guest_files();
        let registry = crate::registry::Registry::new(dir);
        let mut templates = templates::templates_of(&config, needs_files);
        match templates::registry_entries(&registry, &config, needs_files) {
            Ok(found) => {
                for (name, entry) in found {
                    templates.entry(name).or_insert(entry);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the template registry"),
        }
        let mut pools = BTreeMap::new();
        let saved: HashMap<String, u32> = store.pool_targets()?.into_iter().collect();
        for name in templates.keys() {
            // Targets set through the API win over the config.
            let configured = config
                .templates
                .get(name)
                .map(|t| t.pool_target)
                .unwrap_or(u32::from(*name == config.default_template));
            let target = saved.get(name).copied().unwrap_or(configured);
            pools.insert(name.clone(), PoolState::new(target));
        }
        let inner = Inner {
            limits: Limits {
                max_vms: u64::from(config.limits.max_vms),
                max_memory_mib: config.limits.max_memory_mib,
            },
            backoff: Backoff {
                base: Duration::from_millis(config.pool.backoff_base_ms),
                max: Duration::from_millis(config.pool.backoff_max_ms),
            },
            boot_slots: Semaphore::new(config.limits.max_parallel_boots as usize),
            events: Events::new(Arc::clone(&store)),
            metrics: Metrics::new(),
            state: Mutex::new(State {
                pools,
                ..State::default()
            }),
            changed: Notify::new(),
            reconcile: Notify::new(),
            expiry: Notify::new(),
            draining: AtomicBool::new(false),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            templates: RwLock::new(templates),
            registry,
            launcher,
            store,
            audit,
            token_key,
            vm_dir,
            spool_dir,
            snapshots: snapshots::Snapshots::default(),
            foreground: Arc::default(),
            _lock: lock,
            config,
        };
        let core = Core {
            inner: Arc::new(inner),
        };
        core.recover().await?;
        core.recover_execs()?;
        core.start_tasks();
        Ok(core)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    fn refuse_if_draining(&self) -> Result<()> {
        if self.draining() {
            Err(Error::Draining)
        } else {
            Ok(())
        }
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Health {
        Health {
            status: if self.draining() { "draining" } else { "ok" }.into(),
        }
    }

    /// `GET /v1/info`.
    pub fn info(&self) -> Info {
        let usage = self.state().usage;
        let t = &self.config().timeouts;
        Info {
            version: env!("CARGO_PKG_VERSION").into(),
            draining: self.draining(),
            vms: usage.vms,
            max_vms: self.inner.limits.max_vms,
            memory_mib: usage.memory_mib,
            max_memory_mib: self.inner.limits.max_memory_mib,
            ttl_secs: t.ttl(),
            idle_timeout_secs: t.idle(),
            exec_timeout_ms: t.exec(),
        }
    }

    fn pool_info(name: &str, p: &PoolState<Arc<Vm>>) -> (PoolInfo, Vec<Arc<Vm>>) {
        let now = std::time::Instant::now();
        let ready = p.ready.iter().map(|(_, vm)| Arc::clone(vm)).collect();
        let info = PoolInfo {
            template: name.to_string(),
            target: p.target,
            ready: u32::try_from(p.ready.len()).unwrap_or(u32::MAX),
            booting: p.booting,
            consecutive_failures: p.consecutive_failures,
            last_error: p.last_error.clone(),
            backoff_until_ms: p.backoff_until.filter(|t| *t > now).map(|t| {
                let left = u64::try_from(t.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                crate::model::now_ms().saturating_add(left)
            }),
            memory: None,
        };
        (info, ready)
    }

    /// Fills in the ready VMs' memory, read from /proc outside the state
    /// lock.
    fn with_memory((mut info, ready): (PoolInfo, Vec<Arc<Vm>>)) -> PoolInfo {
        let read: Vec<_> = ready.iter().filter_map(|vm| vm.process.memory()).collect();
        if !read.is_empty() {
            let sum = read
                .iter()
                .fold(crate::vm_process::memory::VmMemory::default(), |a, m| {
                    a + *m
                });
            info.memory = Some(crate::model::PoolMemory {
                vms: u32::try_from(read.len()).unwrap_or(u32::MAX),
                rss_bytes: sum.rss,
                pss_bytes: sum.pss,
                private_bytes: sum.private,
                shared_bytes: sum.shared,
            });
        }
        info
    }

    /// `GET /v1/pools`.
    pub fn pools(&self) -> Vec<PoolInfo> {
        let pools: Vec<_> = {
            let st = self.state();
            st.pools
                .iter()
                .map(|(name, p)| Self::pool_info(name, p))
                .collect()
        };
        pools.into_iter().map(Self::with_memory).collect()
    }

    /// `GET /v1/pools/{template}`.
    pub fn pool(&self, template: &str) -> Result<PoolInfo> {
        let info = {
            let st = self.state();
            st.pools
                .get(template)
                .map(|p| Self::pool_info(template, p))
                .ok_or_else(|| Error::NotFound(format!("pool {template:?}")))?
        };
        Ok(Self::with_memory(info))
    }

    /// `PUT /v1/pools/{template}`: sets the target (kept across restarts).
    pub fn set_pool(&self, template: &str, target: u32, caller: &Actor) -> Result<PoolInfo> {
        let max = u32::try_from(self.inner.limits.max_vms).unwrap_or(u32::MAX);
        if target > max {
            return Err(Error::out_of_range(
                "target",
                u64::from(target),
                0,
                u64::from(max),
            ));
        }
        if target > 0 {
            self.template(template)?;
        }
        let info = {
            let mut st = self.state();
            let p = st
                .pools
                .get_mut(template)
                .ok_or_else(|| Error::NotFound(format!("pool {template:?}")))?;
            p.target = target;
            Self::pool_info(template, p)
        };
        self.inner.store.set_pool_target(template, target)?;
        self.audit(
            caller,
            crate::model::AuditKind::PoolChange,
            None,
            crate::model::AuditWhat {
                detail: Some(format!("{template} target {target}")),
                ..Default::default()
            },
            crate::model::AuditResult::ok(),
        );
        self.inner.reconcile.notify_one();
        Ok(Self::with_memory(info))
    }

    /// Live events from now on.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<crate::model::Event> {
        self.inner.events.subscribe()
    }

    /// Stored events after `seq`, oldest first.
    pub fn events_after(&self, seq: u64, limit: u32) -> Result<Vec<crate::model::Event>> {
        self.inner.events.after(seq, limit)
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.refresh_gauges();
        self.inner.metrics.encode()
    }

    fn refresh_gauges(&self) {
        let m = &self.inner.metrics;
        let st = self.state();
        for (name, p) in &st.pools {
            let set = |state: &str, v: i64| {
                m.pool_vms
                    .get_or_create(&metrics::TemplateState {
                        template: name.clone(),
                        state: state.into(),
                    })
                    .set(v);
            };
            set("ready", i64::try_from(p.ready.len()).unwrap_or(i64::MAX));
            set("booting", i64::from(p.booting));
            m.pool_target
                .get_or_create(&metrics::TemplateLabel {
                    template: name.clone(),
                })
                .set(i64::from(p.target));
        }
        m.sandboxes
            .get_or_create(&metrics::StateLabel {
                state: "ready".into(),
            })
            .set(i64::try_from(st.sandboxes.len()).unwrap_or(i64::MAX));
        m.committed_memory
            .set(i64::try_from(st.usage.memory_mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX));
    }
}
