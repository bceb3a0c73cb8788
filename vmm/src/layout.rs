//! The guest physical address map (x86_64).
//!
//! ```text
//! 0x0000_0000 ..            real-mode area: zero page, cmdline, MP table, page tables
//! 0x0010_0000 .. MMIO_START RAM (kernel loaded at 1 MiB)
//! MMIO_START  .. 4 GiB      MMIO gap: boot timer, virtio-mmio devices, TSS, IOAPIC/LAPIC
//! 4 GiB ..                  RAM above the gap, for guests larger than MMIO_START
//! ```

/// Start of the 32-bit MMIO gap; RAM below it ends here.
pub const MMIO_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_SIZE: u64 = 0x4000_0000;
/// First RAM address above the MMIO gap.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Boot-timer pseudo device: the guest writes [`BOOT_TIMER_MAGIC`] at offset 0
/// when userspace starts.
pub const BOOT_TIMER_ADDR: u64 = 0xd000_0000;
/// Size of the boot-timer page.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// The value the guest writes to mark "userspace started".
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// The value the guest writes right before an intended reboot, so the VMM can
/// tell a requested shutdown from a kernel panic (both reset the machine).
pub const BOOT_TIMER_SHUTDOWN_MAGIC: u8 = 124;

/// First virtio-mmio device window; device `i` sits at
/// `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ line handed to virtio devices (IOAPIC pins 5..=23).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;

/// Legacy COM1 port base and IRQ.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// COM1 IRQ line.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller data/command ports (0x60..=0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Length of the i8042 port range.
pub const I8042_PORT_LEN: u64 = 0x5;
