//! A sandbox's egress: the allowlist a create ends up with (the
//! template's, or the create's own within it), the proxy attached when a
//! VM is claimed (late binding: pooled VMs boot without one), the proxy
//! variables of its programs, and its connections in the audit trail.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::vms::Vm;
use super::Core;
use crate::agent_link::AgentAddr;
use crate::auth::Actor;
use crate::egress::{
    Allowlist, EgressEvent, EgressProxy, EgressSettings, Verdict, EGRESS_GUEST_ADDR,
    EGRESS_VSOCK_PORT,
};
use crate::model::{AuditKind, AuditResult, AuditWhat, EgressSpec};
use crate::{Error, Result};

/// Checks an allowlist from a request (400 when it is invalid).
pub(crate) fn check_egress(spec: &EgressSpec) -> Result<Allowlist> {
    Allowlist::parse(spec).map_err(|e| Error::invalid(e.to_string()))
}

/// The variables that send a sandbox's programs through the guest agent's
/// forwarder (both spellings: tools read one or the other).
pub(crate) fn proxy_env() -> Vec<(String, String)> {
    let proxy = format!("http://{EGRESS_GUEST_ADDR}");
    let no_proxy = "localhost,127.0.0.1".to_string();
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|k| (k.to_string(), proxy.clone()))
        .chain(
            ["NO_PROXY", "no_proxy"]
                .into_iter()
                .map(|k| (k.to_string(), no_proxy.clone())),
        )
        .collect()
}

/// The unix socket kiln-vmm hands the guest's connections to the egress
/// port to: `<vsock uds>_<port>`.
fn proxy_socket(vm: &Vm) -> PathBuf {
    let (AgentAddr::HybridVsock(path) | AgentAddr::Unix(path)) = vm.process.agent();
    let mut s = OsString::from(path.as_os_str());
    s.push(format!("_{EGRESS_VSOCK_PORT}"));
    PathBuf::from(s)
}

/// One connection as an audit record's parts.
fn audit_parts(e: &EgressEvent) -> (AuditWhat, AuditResult) {
    let mut target = e.target.clone().unwrap_or_else(|| "-".into());
    if e.unreported > 0 {
        target.push_str(&format!(
            " ({} earlier connections not recorded: too many too fast)",
            e.unreported
        ));
    }
    match &e.verdict {
        Verdict::Allowed {
            addr,
            sent,
            received,
        } => (
            AuditWhat {
                detail: Some(format!(
                    "{target} via {addr}; sent {sent}, received {received}"
                )),
                bytes: Some(sent + received),
                ..AuditWhat::default()
            },
            AuditResult::ok(),
        ),
        Verdict::Denied(reason) => (
            AuditWhat {
                detail: Some(target),
                ..AuditWhat::default()
            },
            AuditResult::denied(reason.clone()),
        ),
        Verdict::Failed(reason) => (
            AuditWhat {
                detail: Some(target),
                ..AuditWhat::default()
            },
            AuditResult {
                outcome: crate::model::AuditOutcome::Error,
                reason: Some(reason.clone()),
                ..AuditResult::ok()
            },
        ),
    }
}

impl Core {
    /// The allowlist a create gets: the template's unless the create gives
    /// one, which must then lie within the template's (when it has one).
    /// `None` (or an empty list): no egress.
    pub(super) fn egress_of(
        &self,
        template: &str,
        asked: Option<&EgressSpec>,
    ) -> Result<Option<EgressSpec>> {
        let default = self.template_egress(template).filter(|s| !s.is_empty());
        let chosen = match (asked, &default) {
            (None, _) => default.clone(),
            (Some(asked), None) => Some(asked.clone()),
            (Some(asked), Some(outer)) => {
                check_egress(asked)?
                    .within(&check_egress(outer)?)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                Some(asked.clone())
            }
        };
        Ok(chosen.filter(|s| !s.is_empty()))
    }

    /// Starts sandbox `id`'s proxy on its VM's egress socket.
    pub(super) fn attach_egress(
        &self,
        id: &str,
        vm: &Vm,
        spec: &EgressSpec,
    ) -> Result<EgressProxy> {
        let c = &self.config().egress;
        let settings = EgressSettings {
            allowlist: check_egress(spec)?,
            max_connections: c.max_connections as usize,
            max_bytes: c.max_bytes,
            // A daemon restart must not hand the sandbox a fresh budget.
            used_before: self.inner.store.egress_used(id)?,
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            connect_timeout: Duration::from_secs(c.connect_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            allow_private: c.allow_private.clone(),
        };
        let socket = proxy_socket(vm);
        // A daemon that died left its socket behind; a re-adopted sandbox
        // gets a new one.
        if std::fs::symlink_metadata(&socket)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&socket);
        }
        let owner = self.jail_owner(vm)?;
        let inner = Arc::downgrade(&self.inner);
        let sandbox = id.to_string();
        let log = Arc::new(move |e: EgressEvent| {
            if let Some(inner) = inner.upgrade() {
                let (what, result) = audit_parts(&e);
                Core { inner }.audit(
                    &Actor::System,
                    AuditKind::Egress,
                    Some(&sandbox),
                    what,
                    result,
                );
            }
        });
        let inner = Arc::downgrade(&self.inner);
        let sandbox = id.to_string();
        let usage = Arc::new(move |bytes: u64| {
            if let Some(inner) = inner.upgrade() {
                if let Err(e) = inner.store.set_egress_used(&sandbox, bytes) {
                    tracing::warn!(sandbox_id = %sandbox, error = %e, "cannot record egress usage");
                }
            }
        });
        EgressProxy::start(&socket, settings, owner, log, Some(usage))
            .map_err(|e| Error::Internal(format!("{e}: {}", error_chain(&e))))
    }

    /// When the daemon runs as root, a jailed kiln-vmm connects to the
    /// proxy socket as the jail's uid: the socket becomes that uid's, and
    /// the run directory searchable by the jail's gid (0710).
    fn jail_owner(&self, vm: &Vm) -> Result<Option<(u32, u32)>> {
        if !rustix::process::geteuid().is_root() || !self.inner.launcher.needs_guest_files() {
            return Ok(None);
        }
        let jail = self.template(&vm.template)?.vm_config().jail;
        if !jail.enabled {
            return Ok(None);
        }
        let dir = vm.process.run_dir();
        std::os::unix::fs::chown(dir, None, Some(jail.gid))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
            })
            .map_err(|e| Error::Internal(format!("run dir {}: {e}", dir.display())))?;
        Ok(Some((jail.uid, jail.gid)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_get_both_spellings_of_the_proxy_variables() {
        let env: std::collections::BTreeMap<_, _> = proxy_env().into_iter().collect();
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(env[k], "http://127.0.0.1:3128", "{k}");
        }
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1");
    }

    #[test]
    fn connections_become_audit_records() {
        let (what, result) = audit_parts(&EgressEvent {
            target: Some("pypi.org:443".into()),
            verdict: Verdict::Allowed {
                addr: "151.101.0.223:443".parse().expect("addr"),
                sent: 10,
                received: 20,
            },
            unreported: 0,
        });
        assert_eq!(what.bytes, Some(30));
        assert_eq!(
            what.detail.as_deref(),
            Some("pypi.org:443 via 151.101.0.223:443; sent 10, received 20")
        );
        assert_eq!(result, AuditResult::ok());
        let (what, result) = audit_parts(&EgressEvent {
            target: Some("evil.com:443".into()),
            verdict: Verdict::Denied("not listed".into()),
            unreported: 3,
        });
        assert_eq!(
            what.detail.as_deref(),
            Some("evil.com:443 (3 earlier connections not recorded: too many too fast)")
        );
        assert_eq!(result, AuditResult::denied("not listed"));
    }
}
