//! KVM in the testbed creates a VM and runs a vCPU to a known exit, and the
//! CPL0 probe sees hardware-speed guest kernel mode.

use std::time::Duration;

use kiln_e2e::require_kvm;
use kiln_vmm::hypervisor::{self, EntryMode, EntryState, Hypervisor, VcpuExit};
use kiln_vmm::probe;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// `mov al, 0x5a; out 0x80, al; mov al, 0xa5; out 0x81, al; hlt`
const GUEST: [u8; 9] = [0xb0, 0x5a, 0xe6, 0x80, 0xb0, 0xa5, 0xe6, 0x81, 0xf4];

#[test]
fn vcpu_runs_to_known_port_writes_and_halt() {
    require_kvm();
    let hv = hypervisor::open_default().expect("open KVM");
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory");
    mem.write_slice(&GUEST, GuestAddress(0x1000))
        .expect("load guest code");
    let host = mem.get_host_address(GuestAddress(0)).expect("host address");
    let vm = hv.create_vm().expect("create VM");
    // SAFETY: `mem` is declared before `vm` and so outlives it.
    unsafe { vm.map_memory(0, 0, 0x10000, host as u64) }.expect("map memory");
    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    vcpu.set_entry_state(&EntryState {
        mode: EntryMode::Protected32,
        rip: 0x1000,
        rsp: 0,
        rbx: 0,
        rsi: 0,
    })
    .expect("entry state");
    let mut seen = Vec::new();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => seen.push((port, data.to_vec())),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen, vec![(0x80, vec![0x5a]), (0x81, vec![0xa5])]);
}

#[test]
fn probe_sees_hardware_speed_guest_kernel_mode() {
    require_kvm();
    let hv: &'static dyn Hypervisor = Box::leak(hypervisor::open_default().expect("open KVM"));
    let report = probe::run(hv, Duration::from_secs(120)).expect("probe runs");
    assert!(
        report.hardware_speed(),
        "the testbed's KVM should run CPL0 code at hardware speed, measured {report:?}"
    );
}
