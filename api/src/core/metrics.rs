//! Prometheus metrics (text format, base units, `kiln_` prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TemplateState {
    pub template: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TemplateLabel {
    pub template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Claim {
    pub template: String,
    pub launch_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BootFailure {
    pub template: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VmStart {
    pub template: String,
    /// `boot`, `restore` (a clone of the template snapshot) or `snapshot`
    /// (booted to take the template snapshot).
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WarmUp {
    pub template: String,
    /// `ran`, or `refused` (the agent would not start the no-op program;
    /// the VM is pooled anyway). A VM whose agent does not answer counts
    /// as a boot failure at stage `warm_up`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LaunchLabel {
    pub launch_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Every metric of the core.
pub(crate) struct Metrics {
    registry: Registry,
    pub pool_vms: Family<TemplateState, Gauge>,
    pub pool_target: Family<TemplateLabel, Gauge>,
    pub claims: Family<Claim, Counter>,
    pub boot_failures: Family<BootFailure, Counter>,
    pub vm_boot: Histogram,
    pub vm_starts: Family<VmStart, Counter>,
    pub warm_ups: Family<WarmUp, Counter>,
    pub claim_duration: Family<LaunchLabel, Histogram, fn() -> Histogram>,
    pub sandboxes: Family<StateLabel, Gauge>,
    pub expirations: Family<ReasonLabel, Counter>,
    pub exec_duration: Histogram,
    pub committed_memory: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let m = Metrics {
            pool_vms: Family::default(),
            pool_target: Family::default(),
            claims: Family::default(),
            boot_failures: Family::default(),
            vm_boot: seconds_histogram(),
            vm_starts: Family::default(),
            warm_ups: Family::default(),
            claim_duration: Family::new_with_constructor(seconds_histogram),
            sandboxes: Family::default(),
            expirations: Family::default(),
            exec_duration: seconds_histogram(),
            committed_memory: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "pool_vms",
            "VMs per pool and state (ready, booting)",
            m.pool_vms.clone(),
        );
        registry.register(
            "pool_target_vms",
            "VMs each pool keeps ready",
            m.pool_target.clone(),
        );
        registry.register(
            "pool_claims",
            "Sandbox creates by template and launch type (warm = pool hit)",
            m.claims.clone(),
        );
        registry.register(
            "pool_boot_failures",
            "Failed VM boots by template and stage (spawn, ready)",
            m.boot_failures.clone(),
        );
        registry.register(
            "vm_starts",
            "VMs that reached agent-ready, by template and how they started (boot, restore, snapshot)",
            m.vm_starts.clone(),
        );
        registry.register(
            "pool_warm_ups",
            "Warm-up execs of VMs bound for a pool, by template and result (ran, refused)",
            m.warm_ups.clone(),
        );
        registry.register_with_unit(
            "vm_boot_duration",
            "VM spawn to agent ready",
            Unit::Seconds,
            m.vm_boot.clone(),
        );
        registry.register_with_unit(
            "sandbox_claim_duration",
            "Create request to sandbox ready",
            Unit::Seconds,
            m.claim_duration.clone(),
        );
        registry.register("sandboxes", "Sandboxes by state", m.sandboxes.clone());
        registry.register(
            "sandbox_expirations",
            "Sandboxes that ended by reason",
            m.expirations.clone(),
        );
        registry.register_with_unit(
            "exec_duration",
            "Exec start to exit, as the daemon sees it",
            Unit::Seconds,
            m.exec_duration.clone(),
        );
        registry.register_with_unit(
            "host_committed_memory",
            "Guest memory committed to live VMs",
            Unit::Bytes,
            m.committed_memory.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_in_base_units() {
        let m = Metrics::new();
        m.claims
            .get_or_create(&Claim {
                template: "minimal".into(),
                launch_type: "warm".into(),
            })
            .inc();
        m.committed_memory.set(256 << 20);
        let t = || "minimal".to_string();
        m.pool_vms
            .get_or_create(&TemplateState {
                template: t(),
                state: "ready".into(),
            })
            .set(2);
        m.pool_target
            .get_or_create(&TemplateLabel { template: t() })
            .set(2);
        m.sandboxes
            .get_or_create(&StateLabel {
                state: "ready".into(),
            })
            .set(1);
        m.boot_failures
            .get_or_create(&BootFailure {
                template: t(),
                stage: "ready".into(),
            })
            .inc();
        m.expirations
            .get_or_create(&ReasonLabel {
                reason: "idle".into(),
            })
            .inc();
        m.claim_duration
            .get_or_create(&LaunchLabel {
                launch_type: "cold".into(),
            })
            .observe(1.0);
        m.exec_duration.observe(0.1);
        m.vm_boot.observe(0.5);
        let text = m.encode();
        for name in [
            "kiln_pool_claims_total{template=\"minimal\",launch_type=\"warm\"} 1",
            "kiln_host_committed_memory_bytes 268435456",
            "kiln_vm_boot_duration_seconds_count 1",
            "kiln_pool_vms{template=\"minimal\",state=\"ready\"} 2",
            "kiln_pool_target_vms{template=\"minimal\"} 2",
            "kiln_sandbox_claim_duration_seconds_count{launch_type=\"cold\"} 1",
            "kiln_pool_boot_failures_total{template=\"minimal\",stage=\"ready\"} 1",
            "kiln_sandbox_expirations_total{reason=\"idle\"} 1",
            "kiln_exec_duration_seconds_count 1",
            "kiln_sandboxes{state=\"ready\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
