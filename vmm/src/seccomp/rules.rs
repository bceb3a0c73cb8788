//! The vocabulary of the filter tables: which syscall a thread may make,
//! under which argument values, and why.

/// The threads of a jailed kiln-vmm; each gets its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The process the caller started when kiln-vmm made a pid namespace:
    /// it waits for the VMM, forwards signals and mirrors its exit.
    Supervisor,
    /// The VMM's main thread once the VM runs: waits, then stops it.
    Main,
    /// `kiln-signals`: turns SIGTERM/SIGINT/SIGUSR1 into VM requests.
    Signals,
    /// `kiln-vcpuN`: runs guest code and its MMIO/PIO exits.
    Vcpu,
    /// `kiln-virtio`: the device event loop (queues, vsock sockets, disks).
    Virtio,
    /// `kiln-control`: the control socket; takes snapshots.
    Control,
}

impl ThreadKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Supervisor,
        ThreadKind::Main,
        ThreadKind::Signals,
        ThreadKind::Vcpu,
        ThreadKind::Virtio,
        ThreadKind::Control,
    ];

    /// Lower-case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Supervisor => "supervisor",
            ThreadKind::Main => "main",
            ThreadKind::Signals => "signals",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Virtio => "virtio",
            ThreadKind::Control => "control",
        }
    }
}

/// One comparison on a syscall argument: `(arg & mask) == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    /// Argument index, 0 to 5.
    pub index: u8,
    /// Bits compared; `u64::MAX` for plain equality.
    pub mask: u64,
    /// Expected value of the masked bits.
    pub value: u64,
    /// Compare only the low 32 bits (the kernel sees an `int`).
    pub dword: bool,
}

impl ArgCheck {
    /// `arg == value` on a 64-bit argument.
    pub const fn eq(index: u8, value: u64) -> Self {
        ArgCheck {
            index,
            mask: u64::MAX,
            value,
            dword: false,
        }
    }

    /// `arg == value` on an `int` or `unsigned int` argument.
    pub const fn eq32(index: u8, value: u64) -> Self {
        ArgCheck {
            index,
            mask: u64::MAX,
            value,
            dword: true,
        }
    }

    /// `(arg & mask) == value`.
    pub const fn masked(index: u8, mask: u64, value: u64) -> Self {
        ArgCheck {
            index,
            mask,
            value,
            dword: false,
        }
    }

    /// Whether `args` pass this check.
    pub fn matches(&self, args: &[u64; 6]) -> bool {
        let mut arg = args[usize::from(self.index)];
        if self.dword {
            arg &= u64::from(u32::MAX);
        }
        if self.mask == u64::MAX {
            arg == self.value
        } else {
            arg & self.mask == self.value
        }
    }
}

/// A syscall a thread may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Syscall number.
    pub syscall: i64,
    /// Argument checks: allowed when any group passes completely; no groups
    /// means any arguments.
    pub when: Vec<Vec<ArgCheck>>,
    /// Why the thread needs it.
    pub why: &'static str,
}

impl Allowed {
    /// Whether a call with these arguments is allowed by this entry.
    pub fn admits(&self, args: &[u64; 6]) -> bool {
        self.when.is_empty() || self.when.iter().any(|g| g.iter().all(|c| c.matches(args)))
    }
}

/// `syscall` with any arguments.
pub fn any(syscall: i64, why: &'static str) -> Allowed {
    Allowed {
        syscall,
        when: Vec::new(),
        why,
    }
}

/// `syscall` when every check passes.
pub fn when(syscall: i64, checks: Vec<ArgCheck>, why: &'static str) -> Allowed {
    Allowed {
        syscall,
        when: vec![checks],
        why,
    }
}

/// `syscall` when any one group of checks passes.
pub fn when_any(syscall: i64, groups: Vec<Vec<ArgCheck>>, why: &'static str) -> Allowed {
    Allowed {
        syscall,
        when: groups,
        why,
    }
}

/// A syscall a thread may attempt but that fails with [`REFUSED_ERRNO`]
/// instead of killing the VMM: for library code that opens files lazily
/// and copes with failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Syscall number.
    pub syscall: i64,
    /// Who makes it, and why failing it is safe.
    pub why: &'static str,
}

/// The error a [`Refused`] syscall returns.
pub const REFUSED_ERRNO: u32 = libc::EACCES as u32;

/// `syscall` refused with [`REFUSED_ERRNO`].
pub fn refuse(syscall: i64, why: &'static str) -> Refused {
    Refused { syscall, why }
}

/// Values the tables need that only exist at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// The process's own pid (as it sees itself: 1 in its pid namespace).
    pub pid: u64,
    /// The signal that kicks vCPU threads out of the guest.
    pub kick_signal: u64,
    /// The VMM process the supervisor waits for (supervisor only).
    pub child: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_compare_masked_and_low_bits() {
        let args = [0xffff_ffff_0000_ae80, 7, 0b101, 0, 0, 0];
        assert!(ArgCheck::eq32(0, 0xae80).matches(&args));
        assert!(!ArgCheck::eq(0, 0xae80).matches(&args));
        assert!(ArgCheck::masked(2, 0b100, 0b100).matches(&args));
        assert!(!ArgCheck::masked(2, 0b010, 0b010).matches(&args));
        let rule = when_any(
            1,
            vec![vec![ArgCheck::eq(1, 7)], vec![ArgCheck::eq(1, 8)]],
            "x",
        );
        assert!(rule.admits(&args));
        assert!(!rule.admits(&[0, 9, 0, 0, 0, 0]));
        assert!(any(1, "x").admits(&[0; 6]));
    }
}
