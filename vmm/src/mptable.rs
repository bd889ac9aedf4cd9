//! Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI, this is how a Linux guest learns how many CPUs there are,
//! their APIC IDs, the IOAPIC, and how ISA IRQs are routed to it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
/// Family 6 stepping 0: what the guest sees only in the MP table.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LOCALINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP floating pointer structure followed by the configuration
/// table, for a table placed at guest address `base`.
pub fn build(base: u64, num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // type, irq type, flags (u16: conforming polarity/trigger), source
        // bus, source IRQ, destination IOAPIC, destination pin.
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 of every LAPIC is ExtINT (the PIC), LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"CAPSA   ");
    header.extend_from_slice(b"microVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0);
    debug_assert_eq!(header.len(), 44);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(SPEC_REV);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // feature bytes: no default config, no IMCR
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    mpf
}

/// Writes the MP table for `num_cpus` vCPUs at `base`, which must leave
/// room below 0xa0000 (the end of base memory).
pub fn write(mem: &GuestMemoryMmap, base: u64, num_cpus: u8) -> Result<()> {
    let bytes = build(base, num_cpus);
    if base + bytes.len() as u64 > 0xa0000 {
        return Err(Error::Boot(format!(
            "MP table for {num_cpus} CPUs does not fit in base memory"
        )));
    }
    mem.write_slice(&bytes, GuestAddress(base))
        .map_err(|e| Error::Memory(format!("writing MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_VCPUS;
    use crate::layout::MPTABLE_ADDR;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for n in [1u8, 2, 4, MAX_VCPUS] {
            let t = build(MPTABLE_ADDR, n);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let phys = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(phys, MPTABLE_ADDR + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes(cfg[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0);
            let count = u16::from_le_bytes(cfg[34..36].try_into().unwrap());
            assert_eq!(
                count as usize,
                n as usize + 1 + 1 + IOAPIC_PINS as usize + 2
            );
            // Processor entries come first, BSP flagged once.
            let procs: Vec<&[u8]> = cfg[44..44 + 20 * n as usize].chunks(20).collect();
            assert!(procs.iter().all(|p| p[0] == ENTRY_PROCESSOR));
            assert_eq!(procs.iter().filter(|p| p[3] & CPU_FLAG_BSP != 0).count(), 1);
            assert!(MPTABLE_ADDR + t.len() as u64 <= 0xa0000);
        }
    }
}
