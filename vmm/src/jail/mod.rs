//! kiln-vmm's jail: how the VMM process confines itself before any guest
//! code runs.
//!
//! [`enter`] runs first in `main`, while the process is still
//! single-threaded:
//!
//! 1. the VM's own cgroup v2 (`cgroup.rs`: `memory.max` = guest RAM + the
//!    VMM's allowance, `pids.max`, optional `cpu.max`);
//! 2. namespaces (`namespaces.rs`): a user namespace (an unprivileged
//!    caller makes its own; a root caller's VMM gets one whose map holds
//!    root and the jail id), pid (the VMM is pid 1, forked by the process
//!    the caller started, which supervises it: `supervisor.rs`), mount,
//!    IPC, UTS and network;
//! 3. a private root (`mounts.rs`) holding only what the VM needs
//!    (`paths.rs`: `/dev/kvm`, kernel, initramfs and read-only drives bound
//!    read-only, read-write drives, the serial log, the vsock socket's
//!    directory; a restore binds its snapshot instead of the kernel and
//!    initramfs), at the same absolute paths as on the host;
//! 4. rlimits (`privileges.rs`).
//!
//! The VMM then builds the VM (opening every file while it still may), and
//! [`Jailed::finish`] drops to the jail uid/gid (root caller) or drops
//! every capability (unprivileged caller) and sets `no_new_privs`, before
//! any thread starts; each thread then installs its seccomp filter
//! (`crate::seccomp`).
//!
//! A piece the host cannot give (no user namespaces for an unprivileged
//! caller, no cgroup v2 or delegation) is logged at warn and left out;
//! `kiln doctor` reports the same from [`probe`].

mod cgroup;
pub mod inspect;
mod mounts;
mod namespaces;
mod paths;
mod privileges;
pub mod probe;
mod supervisor;

use std::io;

use rustix::thread::UnshareFlags;

use crate::config::VmConfig;
pub use cgroup::{cgroup2_mount, CgroupError, Limits};
pub use mounts::{MountError, RootSwitch};
pub use paths::{Access, JailPath};
pub use supervisor::Supervisor;
use supervisor::{FileId, Forked, Sync, SYNC_TIMEOUT};

/// The child's answer when it made its own user namespace (its parent must
/// write the id maps) or did not.
const NEEDS_MAPS: u8 = b'U';
const NO_MAPS: u8 = b'N';
/// The parent's go-ahead once maps and cgroup are in place.
const GO: u8 = b'G';

/// Errors that stop the jail half-way (a host that lacks a piece is not
/// one: that piece is skipped with a warning).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A namespace step failed after namespaces were available.
    #[error("jail: {step}: {source}")]
    Setup {
        /// What was being done.
        step: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The private root could not be built.
    #[error("jail: private root: {0}")]
    Root(#[from] MountError),
    /// The supervisor and the VMM lost each other during setup.
    #[error("jail: the {0} did not answer during setup")]
    Handshake(&'static str),
}

fn setup(step: &'static str) -> impl FnOnce(io::Error) -> JailError {
    move |source| JailError::Setup { step, source }
}

/// What the caller's process became.
pub enum Role {
    /// The VMM: build the VM, then call [`Jailed::finish`].
    Vmm(Jailed),
    /// The supervisor of the VMM's pid namespace: call [`Supervisor::run`].
    Supervisor(Supervisor),
}

/// The VMM's side of the jail, with the privilege drop still to come.
pub struct Jailed {
    /// Whether the jail is on at all.
    enabled: bool,
    /// Switch to these ids (a root caller).
    ids: Option<(u32, u32)>,
    /// Drop capabilities held in a user namespace (an unprivileged caller).
    drop_caps: bool,
    /// The handshake with the supervisor, when there is one.
    sync: Option<Sync>,
}

impl Jailed {
    /// The process as it is: nothing to drop (the jail is off).
    pub fn none() -> Self {
        Jailed {
            enabled: false,
            ids: None,
            drop_caps: false,
            sync: None,
        }
    }

    /// Drops privileges for good: the jail ids or every capability, then
    /// `no_new_privs`. Call after the VM is built and before any thread.
    pub fn finish(mut self) -> Result<(), JailError> {
        if !self.enabled {
            return Ok(());
        }
        if let Some((uid, gid)) = self.ids {
            privileges::switch_ids(uid, gid).map_err(setup("switching to the jail uid/gid"))?;
        } else if self.drop_caps {
            privileges::drop_capabilities().map_err(setup("dropping capabilities"))?;
        }
        privileges::set_no_new_privs().map_err(setup("no_new_privs"))?;
        if let Some(sync) = &mut self.sync {
            // Changing ids cleared the parent-death signal: set it again,
            // then make sure the supervisor did not die in between.
            privileges::die_with_parent().map_err(setup("parent death signal"))?;
            if !sync.peer_alive() {
                return Err(JailError::Handshake("supervisor"));
            }
        }
        Ok(())
    }
}

/// Caller identity.
#[derive(Debug, Clone, Copy)]
struct Caller {
    root: bool,
    uid: u32,
    gid: u32,
}

/// Sets up the jail of `config` (its paths are rewritten to ones that
/// resolve inside). The process must be single-threaded, with the signals
/// it forwards ([`supervisor::FORWARDED`]) and SIGCHLD blocked.
pub fn enter(config: &mut VmConfig) -> Result<Role, JailError> {
    let paths = paths::plan(config);
    let caller = Caller {
        root: rustix::process::geteuid().is_root(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    };
    let mut vm_cgroup = match cgroup::cgroup2_mount().and_then(|mount| {
        cgroup::VmCgroup::create(
            &mount,
            &config.jail.cgroup_parent,
            &Limits::for_config(config),
        )
    }) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("jail: no cgroup limits: {e}");
            None
        }
    };
    tracing::debug!("step: jail: cgroup created");
    let socket = config
        .vsock
        .as_ref()
        .map(|v| (v.uds_path.clone(), FileId::of(&v.uds_path)));

    // An unprivileged caller needs its own user namespace for any other.
    let mut in_userns = false;
    if !caller.root {
        match namespaces::unshare(UnshareFlags::NEWUSER)
            .and_then(|()| namespaces::map_self(caller.uid, caller.gid))
        {
            Ok(()) => in_userns = true,
            Err(e) => tracing::warn!(
                "jail: no user namespace ({e}): running without namespaces, private root or cgroup move; seccomp, no_new_privs and rlimits still apply"
            ),
        }
    }
    let namespaces = caller.root || in_userns;
    let pid_ns = namespaces
        && match namespaces::unshare(UnshareFlags::NEWPID) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("jail: no pid namespace ({e}): the VMM runs without a supervisor");
                false
            }
        };

    tracing::debug!("step: jail: user and pid namespaces");
    let mut sync = None;
    if pid_ns {
        let cgroup_dir = vm_cgroup.as_ref().map(cgroup::VmCgroup::dir_fd);
        match supervisor::fork(cgroup_dir).map_err(setup("forking the VMM"))? {
            Forked::Parent {
                child,
                mut sync,
                in_cgroup,
            } => {
                // No answer: the VMM failed its own setup and says why on
                // stderr; the supervisor only waits for it and ends alike.
                if let Some(answer) = sync.recv(SYNC_TIMEOUT) {
                    if answer == NEEDS_MAPS {
                        namespaces::map_child(child, config.jail.uid, config.jail.gid)
                            .map_err(setup("writing the vmm's id maps"))?;
                        tracing::debug!("step: jail: supervisor wrote the id maps");
                    }
                    if let Some(cg) = vm_cgroup.as_mut().filter(|_| !in_cgroup) {
                        if let Err(e) = cg.add(child) {
                            tracing::warn!("jail: no cgroup limits: {e}");
                        }
                    }
                    sync.send(GO).map_err(setup("starting the vmm"))?;
                    tracing::debug!("step: jail: supervisor moved the vmm into its cgroup");
                }
                if let Err(e) = privileges::set_rlimits() {
                    tracing::warn!("jail: supervisor rlimits: {e}");
                }
                return Ok(Role::Supervisor(Supervisor {
                    child,
                    sync,
                    cgroup: vm_cgroup,
                    socket,
                    seccomp: config.jail.seccomp,
                }));
            }
            Forked::Child(s) => sync = Some(s),
        }
    }

    let mut needs_maps = false;
    if namespaces {
        // A root caller's VMM gets a user namespace whose maps its parent
        // writes; without a supervisor it stays real root until the switch.
        if caller.root && pid_ns {
            match namespaces::unshare(UnshareFlags::NEWUSER | namespaces::VIEW) {
                Ok(()) => needs_maps = true,
                Err(e) => tracing::warn!("jail: no user namespace ({e}): the VMM is real root until it switches to the jail uid"),
            }
        }
        if !needs_maps {
            namespaces::unshare(namespaces::VIEW)
                .map_err(setup("unsharing mount, ipc, uts and net namespaces"))?;
        }
    }
    tracing::debug!("step: jail: vmm forked, view namespaces unshared");
    if let Some(sync) = &mut sync {
        sync.send(if needs_maps { NEEDS_MAPS } else { NO_MAPS })
            .map_err(setup("answering the supervisor"))?;
        // Once the maps are written this process is root of its user
        // namespace, with every capability there and none outside.
        if sync.recv(SYNC_TIMEOUT) != Some(GO) {
            return Err(JailError::Handshake("supervisor"));
        }
    } else if let Some(cg) = &mut vm_cgroup {
        if let Err(e) = cg.add(0) {
            tracing::warn!("jail: no cgroup limits: {e}");
        }
    }
    tracing::debug!("step: jail: supervisor said go");
    if namespaces {
        match mounts::enter_root(&paths)? {
            RootSwitch::PivotRoot => {}
            RootSwitch::Chroot => tracing::info!(
                "jail: the host root is the initramfs, which pivot_root cannot leave: the jail root was moved over / and entered with chroot"
            ),
        }
        let _ = rustix::system::sethostname(b"kiln");
    }
    tracing::debug!("step: jail: private root entered");
    privileges::set_rlimits().map_err(setup("rlimits"))?;
    Ok(Role::Vmm(Jailed {
        enabled: true,
        ids: caller.root.then_some((config.jail.uid, config.jail.gid)),
        drop_caps: in_userns,
        sync,
    }))
}
