//! `kiln doctor`: what this host offers for running kiln's VMs.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use kiln_vmm::hypervisor::kvm::{KvmHypervisor, KVM_PATH};
use kiln_vmm::hypervisor::Hypervisor;
use kiln_vmm::jail::probe as jail_probe;
use kiln_vmm::probe::{self, ProbeReport};

/// Path of the MSHV device node (Microsoft Hypervisor).
const MSHV_PATH: &str = "/dev/mshv";
/// Time the CPL0 probe guest may take before KVM is declared unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Not available; not fatal.
    Info,
    /// Blocks running VMs on this host.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, in one line.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Individual checks, in order.
    pub checks: Vec<Check>,
    /// The CPL0 probe result, when it ran.
    pub probe: Option<ProbeReport>,
    /// Whether kiln's VMs can run directly on this host.
    pub vms_can_run_here: bool,
    /// What to do next, for a person.
    pub advice: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// The jail pieces this host gives kiln-vmm; a missing one is not fatal
/// (kiln-vmm runs with the rest and warns), so it is reported as info.
fn jail_checks() -> Vec<Check> {
    let parent = kiln_vmm::config::JailConfig::default().cgroup_parent;
    jail_probe::probe(&parent)
        .into_iter()
        .map(|p| Check {
            name: p.name,
            status: if p.available {
                Status::Ok
            } else {
                Status::Info
            },
            detail: if p.available {
                p.detail
            } else {
                format!("jail runs without it: {}", p.detail)
            },
        })
        .collect()
}

/// Whether booted VMs' RAM gets transparent huge pages here.
fn huge_pages_check() -> Check {
    let detail = match kiln_vmm::memory::host_thp_mode() {
        Some(mode) if kiln_vmm::memory::host_has_huge_pages() => format!(
            "transparent huge pages: {mode}; booted VMs' RAM uses them (faster cold boots, touched memory resident 2 MiB at a time)"
        ),
        Some(mode) => format!(
            "transparent huge pages: {mode}; booted VMs' RAM stays on 4 KiB pages (slower cold boots)"
        ),
        None => "transparent huge pages: not shown in sysfs; booted VMs' RAM stays on 4 KiB pages".to_string(),
    };
    check("huge pages", Status::Info, detail)
}

/// Checks /dev/kvm, times a tiny CPL0 guest on it, looks for MSHV, and
/// lists what the VMM's jail gets on this host.
pub fn diagnose() -> Report {
    let mut checks = Vec::new();
    let mut probe_report = None;
    let mut usable = false;
    let mut emulated = false;

    if !Path::new(KVM_PATH).exists() {
        checks.push(check(
            "kvm device",
            Status::Fail,
            format!("{KVM_PATH} does not exist: no KVM on this host (enable virtualization, load kvm_intel/kvm_amd)"),
        ));
    } else {
        match KvmHypervisor::open() {
            Err(e) => checks.push(check("kvm device", Status::Fail, e.to_string())),
            Ok(kvm) => {
                checks.push(check(
                    "kvm device",
                    Status::Ok,
                    format!("{KVM_PATH} opened read-write, API version {}, required capabilities present", kvm.api_version()),
                ));
                let hv: &'static dyn Hypervisor = Box::leak(Box::new(kvm));
                match probe::run(hv, PROBE_TIMEOUT) {
                    Ok(report) => {
                        probe_report = Some(report);
                        let numbers = format!(
                            "guest CPL0 loop {:.2} ns/iter vs host {:.2} ns/iter ({:.1}x), exit round trip {:.1} us",
                            report.guest_ns_per_iter,
                            report.host_ns_per_iter,
                            report.slowdown(),
                            report.round_trip_us
                        );
                        if report.hardware_speed() {
                            usable = true;
                            checks.push(check(
                                "guest kernel mode",
                                Status::Ok,
                                format!("hardware speed: {numbers}"),
                            ));
                        } else {
                            emulated = true;
                            checks.push(check(
                                "guest kernel mode",
                                Status::Fail,
                                format!("EMULATED, not hardware speed: {numbers}"),
                            ));
                        }
                    }
                    Err(e) => {
                        emulated = true;
                        checks.push(check(
                            "guest kernel mode",
                            Status::Fail,
                            format!("this KVM cannot run a CPL0 guest properly: {e}"),
                        ));
                    }
                }
            }
        }
    }

    if Path::new(MSHV_PATH).exists() {
        checks.push(check(
            "mshv device",
            Status::Info,
            format!("{MSHV_PATH} present (kiln's MSHV backend is not built in yet)"),
        ));
    } else {
        checks.push(check(
            "mshv device",
            Status::Info,
            format!("{MSHV_PATH} absent"),
        ));
    }

    checks.push(huge_pages_check());
    checks.extend(jail_checks());

    let advice = if usable {
        "kiln's VMs can run directly on this host.".to_string()
    } else if emulated {
        "this host's /dev/kvm emulates guest kernel mode (it is not hardware virtualization), so Linux guests cannot boot on it at usable speed: kiln's VMs must run in the testbed (tools/testbed run -- CMD), a QEMU machine whose nested KVM is real".to_string()
    } else {
        "no usable KVM here: kiln's VMs must run in the testbed (tools/testbed run -- CMD), or on a host with hardware virtualization".to_string()
    };
    Report {
        checks,
        probe: probe_report,
        vms_can_run_here: usable,
        advice,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Info => "info",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {:<18} {}", c.name, c.detail)?;
        }
        writeln!(f, "verdict: {}", self.advice)
    }
}
