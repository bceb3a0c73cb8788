//! The template map: built-in, configured and registry templates. The
//! reconciler reloads the registry's part on every pass, so a template
//! built while the daemon runs appears, and a rebuilt one (a new manifest
//! revision) rolls its pool.

use std::collections::BTreeMap;

use super::pool_state::PoolState;
use super::Core;
use crate::auth::Actor;
use crate::config::{Config, TemplateConfig};
use crate::model::{AuditKind, AuditResult, AuditWhat, EgressSpec, TemplateInfo};
use crate::registry::{Listed, Registry};
use crate::template::{self, Overrides, Template};
use crate::{Error, Result};

/// Where a template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// `python-node`, `minimal`.
    Builtin,
    /// The daemon's config file.
    Config,
    /// `<state>/templates/` (`kiln template build`).
    Registry,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::Config => "config",
            Source::Registry => "registry",
        }
    }
}

/// A template and whether VMs can be started from it.
pub(super) struct TemplateEntry {
    pub template: Template,
    pub error: Option<String>,
    pub source: Source,
    /// The default egress allowlist of its sandboxes.
    pub egress: Option<EgressSpec>,
    /// A registry template's image hash.
    pub content_hash: Option<String>,
}

/// A template with nothing resolved (listed, but unavailable or booting
/// no kernel).
fn bare(name: &str, tc: &TemplateConfig) -> Template {
    Template {
        name: name.to_string(),
        kernel: tc.kernel.clone().unwrap_or_default(),
        initramfs: tc.initramfs.clone().unwrap_or_default(),
        image: tc.image.clone(),
        vcpus: tc.vcpus,
        mem_mib: tc.mem_mib,
        kernel_args: tc.kernel_args.clone(),
        huge_pages: tc.huge_pages,
        disk_mib: tc.disk_mib,
        env: BTreeMap::new(),
        working_dir: None,
        revision: None,
    }
}

/// Resolves a configured template; a missing guest file leaves it listed
/// but unavailable (with the reason).
fn resolve_template(
    name: &str,
    tc: &TemplateConfig,
    needs_files: bool,
) -> Result<Template, String> {
    if !needs_files {
        return Ok(bare(name, tc));
    }
    match &tc.base {
        Some(base) => template::resolve(
            base,
            &Overrides {
                kernel: tc.kernel.as_deref(),
                initramfs: tc.initramfs.as_deref(),
                image: tc.image.as_deref(),
            },
        )
        .map(|mut t| {
            t.name = name.to_string();
            t.vcpus = tc.vcpus;
            t.mem_mib = tc.mem_mib;
            t.kernel_args = tc.kernel_args.clone();
            t.huge_pages = tc.huge_pages;
            t.disk_mib = tc.disk_mib;
            t
        })
        .map_err(|e| e.to_string()),
        None => crate::artifacts::kernel(tc.kernel.as_deref())
            .and_then(|kernel| {
                Ok(Template {
                    kernel,
                    initramfs: crate::artifacts::initramfs(tc.initramfs.as_deref())?,
                    ..bare(name, tc)
                })
            })
            .map_err(|e| e.to_string()),
    }
}

/// The configured templates plus the built-in ones.
pub(super) fn templates_of(config: &Config, needs_files: bool) -> BTreeMap<String, TemplateEntry> {
    let mut all: BTreeMap<String, (TemplateConfig, Source)> = config
        .templates
        .iter()
        .map(|(n, tc)| (n.clone(), (tc.clone(), Source::Config)))
        .collect();
    for name in template::BUILTIN {
        all.entry(name.to_string()).or_insert_with(|| {
            let builtin = template::builtin_shape(name);
            let tc = TemplateConfig {
                base: Some(name.to_string()),
                kernel: None,
                initramfs: None,
                image: None,
                vcpus: builtin.0,
                mem_mib: builtin.1,
                kernel_args: String::new(),
                huge_pages: true,
                disk_mib: None,
                pool_target: u32::from(name == config.default_template),
                egress: None,
            };
            (tc, Source::Builtin)
        });
    }
    all.iter()
        .map(|(name, (tc, source))| {
            let resolved = resolve_template(name, tc, needs_files);
            let entry = TemplateEntry {
                error: resolved.as_ref().err().cloned(),
                template: resolved.unwrap_or_else(|_| bare(name, tc)),
                source: *source,
                egress: tc.egress.clone(),
                content_hash: None,
            };
            (name.clone(), entry)
        })
        .collect()
}

/// The registry's templates whose names the config does not take.
pub(super) fn registry_entries(
    registry: &Registry,
    config: &Config,
    needs_files: bool,
) -> std::result::Result<BTreeMap<String, TemplateEntry>, crate::registry::RegistryError> {
    let mut out = BTreeMap::new();
    for Listed { name, manifest } in registry.list()? {
        if config.templates.contains_key(&name) {
            tracing::warn!(template = %name, "a registry template has the name of a configured one; the config wins");
            continue;
        }
        let resolved = manifest.and_then(|m| {
            let t = m.template(&registry.dir_of(&name), needs_files)?;
            Ok((t, m))
        });
        let entry = match resolved {
            Ok((template, m)) => TemplateEntry {
                template,
                error: None,
                source: Source::Registry,
                egress: m.spec.egress.clone(),
                content_hash: Some(m.image_sha256.clone()),
            },
            Err(e) => TemplateEntry {
                template: Template {
                    name: name.clone(),
                    kernel: Default::default(),
                    initramfs: Default::default(),
                    image: None,
                    vcpus: 1,
                    mem_mib: 0,
                    kernel_args: String::new(),
                    huge_pages: true,
                    disk_mib: None,
                    env: BTreeMap::new(),
                    working_dir: None,
                    revision: None,
                },
                error: Some(e.to_string()),
                source: Source::Registry,
                egress: None,
                content_hash: None,
            },
        };
        out.insert(name, entry);
    }
    Ok(out)
}

impl Core {
    fn template_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TemplateEntry>> {
        self.inner
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The map to change; take the state lock first when both are held.
    fn template_map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, TemplateEntry>> {
        self.inner
            .templates
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A template that can start VMs.
    pub(super) fn template(&self, name: &str) -> Result<Template> {
        let map = self.template_map();
        let entry = map.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "template {name:?} (known: {})",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        match &entry.error {
            None => Ok(entry.template.clone()),
            Some(e) => Err(Error::invalid(format!(
                "template {name} is unavailable: {e}"
            ))),
        }
    }

    /// Whether `name` is a known template (usable or not).
    pub(super) fn has_template(&self, name: &str) -> bool {
        self.template_map().contains_key(name)
    }

    /// The default egress allowlist of `name`'s sandboxes.
    pub(super) fn template_egress(&self, name: &str) -> Option<EgressSpec> {
        self.template_map().get(name).and_then(|e| e.egress.clone())
    }

    /// `GET /v1/templates`.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        let path =
            |p: &std::path::Path| (!p.as_os_str().is_empty()).then(|| p.display().to_string());
        self.template_map()
            .iter()
            .map(|(name, e)| TemplateInfo {
                name: name.clone(),
                vcpus: e.template.vcpus,
                mem_mib: e.template.mem_mib,
                kernel: path(&e.template.kernel),
                initramfs: path(&e.template.initramfs),
                image: e.template.image.as_deref().and_then(path),
                available: e.error.is_none(),
                error: e.error.clone(),
                source: e.source.as_str().to_string(),
                content_hash: e.content_hash.clone(),
                revision: e.template.revision.clone(),
            })
            .collect()
    }

    /// Rereads the registry: new templates get a pool (target 0 unless one
    /// was saved), removed ones lose theirs (their pooled VMs retired). A
    /// rebuilt one keeps its pool; the reconciler retires VMs of the old
    /// revision.
    pub(super) fn reload_templates(&self) {
        let needs_files = self.inner.launcher.needs_guest_files();
        let fresh = match registry_entries(&self.inner.registry, self.config(), needs_files) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the template registry; keeping what was loaded");
                return;
            }
        };
        let has_new = {
            let map = self.template_map();
            fresh.keys().any(|n| !map.contains_key(n))
        };
        let saved: BTreeMap<String, u32> = if has_new {
            self.inner
                .store
                .pool_targets()
                .map(|t| t.into_iter().collect())
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let mut retire = Vec::new();
        {
            // The state lock first, as everywhere: a removal in progress
            // (in `deleting`) is not brought back by a pass that read the
            // registry before it.
            let mut st = self.state();
            let mut map = self.template_map_mut();
            let removed: Vec<String> = map
                .iter()
                .filter(|(n, e)| e.source == Source::Registry && !fresh.contains_key(*n))
                .map(|(n, _)| n.clone())
                .collect();
            for name in removed {
                tracing::info!(template = %name, "template gone from the registry");
                map.remove(&name);
                if let Some(mut pool) = st.pools.remove(&name) {
                    retire.extend(pool.ready.drain(..).map(|(_, vm)| vm));
                }
            }
            for (name, entry) in fresh {
                if st.deleting.contains(&name) {
                    continue;
                }
                match map.get(&name) {
                    // A built-in name: check_name keeps these out.
                    Some(o) if o.source != Source::Registry => continue,
                    None => {
                        tracing::info!(template = %name, "template added from the registry");
                        let target = saved.get(&name).copied().unwrap_or(0);
                        st.pools
                            .entry(name.clone())
                            .or_insert_with(|| PoolState::new(target));
                    }
                    Some(o) if o.template.revision != entry.template.revision => {
                        tracing::info!(template = %name, revision = ?entry.template.revision, "template rebuilt; rolling its pool");
                    }
                    Some(_) => {}
                }
                map.insert(name, entry);
            }
        }
        for vm in retire {
            self.forget_vm(&vm.id);
            let core = self.clone();
            self.inner.tasks.spawn(async move { core.retire(vm).await });
        }
    }

    /// `DELETE /v1/templates/{name}`: removes a registry template nothing
    /// uses (pool target 0, no VM or sandbox of it); else 409
    /// `template_in_use`.
    pub async fn delete_template(&self, name: &str, caller: &Actor) -> Result<()> {
        let result = self.delete_template_inner(name).await;
        self.audit(
            caller,
            AuditKind::PoolChange,
            None,
            AuditWhat {
                detail: Some(format!("template {name} removed")),
                ..Default::default()
            },
            AuditResult::of(&result),
        );
        result
    }

    async fn delete_template_inner(&self, name: &str) -> Result<()> {
        {
            let mut st = self.state();
            let mut map = self.template_map_mut();
            match map.get(name).map(|e| e.source) {
                None => return Err(Error::NotFound(format!("template {name:?}"))),
                Some(Source::Registry) => {}
                Some(s) => {
                    return Err(Error::invalid(format!(
                        "template {name} is {}; only registry templates can be removed",
                        if s == Source::Builtin {
                            "built in"
                        } else {
                            "in the daemon's config file"
                        }
                    )))
                }
            }
            let in_use = |reason: String| Error::TemplateInUse {
                template: name.to_string(),
                reason,
            };
            if let Some(p) = st.pools.get(name) {
                if p.target > 0 {
                    return Err(in_use(format!(
                        "its pool target is {} (set it to 0 first)",
                        p.target
                    )));
                }
            }
            let vms = st.vms.values().filter(|s| s.vm.template == name).count();
            let sandboxes = st
                .sandboxes
                .values()
                .filter(|s| s.info.template == name)
                .count();
            if vms > 0 || sandboxes > 0 {
                return Err(in_use(format!(
                    "{vms} VM(s) and {sandboxes} sandbox(es) use it"
                )));
            }
            map.remove(name);
            st.pools.remove(name);
            st.deleting.insert(name.to_string());
        }
        let registry = self.inner.registry.clone();
        let owned = name.to_string();
        let removed = tokio::task::spawn_blocking(move || registry.remove(&owned))
            .await
            .map_err(|e| Error::Internal(format!("removing template {name}: {e}")));
        self.state().deleting.remove(name);
        let removed = removed?;
        if let Err(e) = self.inner.store.set_pool_target(name, 0) {
            tracing::warn!(template = %name, error = %e, "pool target not reset");
        }
        let _ = std::fs::remove_dir_all(self.inner.config.state_dir.join("snapshots").join(name));
        match removed {
            Ok(()) | Err(crate::registry::RegistryError::NotFound(_)) => Ok(()),
            Err(e) => Err(Error::Internal(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templates_huge_pages_setting_reaches_its_vm_config() {
        let config = Config::from_toml(
            "[templates.dense]\nbase = \"minimal\"\nhuge_pages = false\n[templates.fast]\nbase = \"minimal\"",
        )
        .expect("config");
        let all = templates_of(&config, false);
        assert!(!all["dense"].template.vm_config().huge_pages);
        assert!(all["fast"].template.vm_config().huge_pages);
        assert!(all["python-node"].template.vm_config().huge_pages);
    }
}
