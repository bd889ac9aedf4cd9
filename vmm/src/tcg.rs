//! Whether capsa-vmm runs on a CPU that qemu's TCG emulates (the KVM test
//! host on machines without usable hardware virtualization).
//!
//! There, capsa-vmm takes its two start-up speed-ups out: guest memory is
//! registered after the in-kernel irqchip, and the kernel and initramfs are
//! copied into guest memory instead of mapped copy-on-write. In stress runs
//! of the test host (scripts/stress-test-host.sh; docs/guest-kernel.md has
//! the table) the test host's KVM lost track of its nested page tables (a
//! kernel pointer in a TDP MMU page-table entry, corrupted page tables of a
//! vCPU thread, guests triple-faulting) in runs with the speed-ups in, as in
//! session 3's full runs; the speed-ups save milliseconds (docs/vmm.md)
//! that matter on real KVM hosts, not under emulation.

use std::sync::OnceLock;

/// True when CPUID's hypervisor leaf names qemu's TCG ("TCGTCGTCGTCG").
pub fn emulated() -> bool {
    static TCG: OnceLock<bool> = OnceLock::new();
    *TCG.get_or_init(|| {
        // Without a hypervisor, this leaf returns zeros or the highest
        // basic leaf's values: never that vendor string.
        let r = std::arch::x86_64::__cpuid(0x4000_0000);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        vendor[8..].copy_from_slice(&r.edx.to_le_bytes());
        &vendor == b"TCGTCGTCGTCG"
    })
}
