//! Guest physical memory layout of a capsa microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT used for the PVH entry (4 entries)
//! 0x0000_0520  IDT (empty)
//! 0x0000_6000  hvm_start_info (PVH boot)
//! 0x0000_6040  PVH module list (the initramfs)
//! 0x0000_7000  PVH memory map
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, where Linux looks for it)
//! 0x0010_0000  high memory: kernel (at its ELF load address), initramfs at the top
//! 0xc000_0000  start of the 32-bit MMIO hole (RAM above this moves to 4 GiB)
//! 0xd000_0000  virtio-mmio devices, one 4 KiB window each
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;
pub const MPTABLE_ADDR: u64 = 0x9fc00;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// Legacy IRQ of the first serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices; one per device.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IOAPIC pins announced in the MP table (KVM's IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;

/// The guest RAM ranges for `mem_bytes` of memory: below the MMIO hole,
/// and the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        // virtio windows and APICs sit in the hole.
        const { assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START) };
        const { assert!((IOAPIC_ADDR as u64) < MMIO_GAP_END) };
    }
}
