//! Host limits: how many VMs may live and how much guest memory may be
//! committed to them. Booting, pooled and claimed VMs all count.

use crate::Error;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most live VMs.
    pub max_vms: u64,
    /// Most committed guest memory, MiB.
    pub max_memory_mib: u64,
}

/// What is in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Live VMs.
    pub vms: u64,
    /// Committed guest memory, MiB.
    pub memory_mib: u64,
}

impl Limits {
    /// Admits one more VM of `mem_mib`, or names the limit it breaks.
    pub fn admit(&self, usage: Usage, mem_mib: u64) -> Result<(), Error> {
        if usage.vms.saturating_add(1) > self.max_vms {
            return Err(Error::HostCapacity {
                limit: "max_vms".into(),
                in_use: usage.vms,
                max: self.max_vms,
            });
        }
        if usage.memory_mib.saturating_add(mem_mib) > self.max_memory_mib {
            return Err(Error::HostCapacity {
                limit: "max_memory_mib".into(),
                in_use: usage.memory_mib,
                max: self.max_memory_mib,
            });
        }
        Ok(())
    }

    /// How many more VMs of `mem_mib` fit.
    pub fn room_for(&self, usage: Usage, mem_mib: u64) -> u32 {
        let by_count = self.max_vms.saturating_sub(usage.vms);
        let by_mem = self
            .max_memory_mib
            .saturating_sub(usage.memory_mib)
            .checked_div(mem_mib)
            .unwrap_or(u64::MAX);
        u32::try_from(by_count.min(by_mem)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_vms: 3,
        max_memory_mib: 1000,
    };

    #[test]
    fn each_limit_is_named_when_hit() {
        let u = |vms, memory_mib| Usage { vms, memory_mib };
        assert_eq!(L.admit(u(2, 500), 500), Ok(()));
        let e = L.admit(u(3, 0), 1).expect_err("count");
        assert!(matches!(&e, Error::HostCapacity { limit, max: 3, .. } if limit == "max_vms"));
        let e = L.admit(u(1, 600), 500).expect_err("memory");
        assert!(
            matches!(&e, Error::HostCapacity { limit, in_use: 600, max: 1000 } if limit == "max_memory_mib")
        );
        assert_eq!(L.room_for(u(0, 0), 300), 3);
        assert_eq!(L.room_for(u(0, 500), 300), 1);
        assert_eq!(L.room_for(u(3, 0), 1), 0);
        assert_eq!(L.room_for(u(0, 0), 0), 3);
    }
}
