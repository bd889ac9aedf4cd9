//! vCPU setup for the PVH entry (32-bit protected mode, paging off) and
//! the vCPU run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd};

use crate::boot::{BootEntry, GDT};
use crate::devices::{Bus, VmEvents, VmmExit};
use crate::error::{Error, Result};
use crate::layout::{GDT_ADDR, IDT_ADDR};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

const X86_CR0_PE: u64 = 1;

/// The host CPUID as KVM can virtualize it, to be specialised per vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        offer_tsc_deadline(&mut cpuid);
    }
    Ok(cpuid)
}

/// Sets CPUID.1:ECX[24], the LAPIC's TSC-deadline mode: KVM emulates it
/// but leaves the bit to userspace (KVM_CAP_TSC_DEADLINE_TIMER). With it
/// the guest kernel needs no LAPIC timer calibration against the PIT,
/// which in the KVM test host's nested guests failed its verification in
/// about one boot of four ("APIC timer disabled due to verification
/// failure"), leaving the guest on the PIT's broadcast tick.
fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x1 {
            e.ecx |= 1 << 24;
        }
    }
}

/// Specialises the CPUID for vCPU `id` of `count`: APIC IDs, topology, and
/// the hypervisor bit.
pub fn filter_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let id32 = u32::from(id);
    // Bits needed to number `count` logical CPUs.
    let shift = 32 - u32::from(count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical CPU count.
                e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (u32::from(count) << 16);
                // ECX[31]: running under a hypervisor.
                e.ecx |= 1 << 31;
                // EDX[28]: HTT, meaning EBX[23:16] is valid.
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => {
                // Extended topology: one thread per core, `count` cores.
                e.edx = id32;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i & 0xff;
                    }
                }
            }
            0x8000_001e => {
                // AMD extended APIC ID.
                e.eax = id32;
            }
            _ => {}
        }
    }
}

fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// Configures one vCPU for the PVH entry. Only the boot vCPU's registers
/// matter; the others wait for INIT/SIPI from the guest.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    base_cpuid: &CpuId,
    boot: BootEntry,
) -> Result<()> {
    let mut cpuid = base_cpuid.clone();
    filter_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;

    let entries = [
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ];
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::Boot(format!("building MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        tracing::debug!(
            set,
            wanted = entries.len(),
            "KVM accepted only some boot MSRs"
        );
    }

    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.pvh_entry.0,
        rbx: boot.start_info.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;

    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let code = segment_from_gdt(GDT[1], 1);
    let data = segment_from_gdt(GDT[2], 2);
    let tss = segment_from_gdt(GDT[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;

    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;
    Ok(())
}

/// What the vCPU thread needs.
pub struct VcpuRunner {
    pub id: u8,
    pub vcpu: VcpuFd,
    pub pio: Bus,
    pub mmio: Bus,
    pub events: Arc<VmEvents>,
    pub report_first_run: bool,
    pub exit_after_first_run: bool,
    pub seccomp: bool,
    /// The VM has vhost-user devices (see seccomp::Thread::Vcpu).
    pub vhost_user: bool,
    pub started: Instant,
}

static FIRST_RUN_REPORTED: AtomicBool = AtomicBool::new(false);

/// CLOCK_MONOTONIC in nanoseconds (what `first_run` compares against).
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

impl VcpuRunner {
    /// Runs the vCPU until the VM is asked to stop.
    pub fn run(mut self) {
        if self.seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::Thread::Vcpu {
                vhost_user: self.vhost_user,
            }) {
                self.events
                    .request_exit(VmmExit::VmmError(format!("vcpu{}: {e}", self.id)));
                return;
            }
        }
        let mut first = true;
        while !self.events.should_stop() {
            if first && self.id == 0 {
                first = false;
                if self.report_first_run && !FIRST_RUN_REPORTED.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "capsa-vmm: first KVM_RUN at monotonic_ns={} ({} us after main)",
                        monotonic_ns(),
                        self.started.elapsed().as_micros()
                    );
                }
            }
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => {
                    self.events
                        .request_exit(VmmExit::VmmError(format!("vcpu{}: KVM_RUN: {e}", self.id)));
                    break;
                }
            };
            if self.exit_after_first_run {
                self.events.request_exit(VmmExit::PowerOff);
                break;
            }
            match exit {
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(u64::from(port), data);
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                }
                VcpuExit::Hlt => self.events.request_exit(VmmExit::PowerOff),
                VcpuExit::Shutdown => self.events.request_exit(VmmExit::GuestCrash(format!(
                    "vcpu{} triple fault (KVM_EXIT_SHUTDOWN)",
                    self.id
                ))),
                VcpuExit::SystemEvent(kind, _) => self.events.request_exit(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmmExit::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VmmExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VmmExit::GuestPanic,
                    k => VmmExit::GuestCrash(format!("vcpu{}: system event {k}", self.id)),
                }),
                VcpuExit::FailEntry(reason, cpu) => {
                    self.events.request_exit(VmmExit::GuestCrash(format!(
                        "vcpu{}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})",
                        self.id
                    )))
                }
                VcpuExit::InternalError => self.events.request_exit(VmmExit::GuestCrash(format!(
                    "vcpu{}: KVM internal error",
                    self.id
                ))),
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                other => self.events.request_exit(VmmExit::GuestCrash(format!(
                    "vcpu{}: unexpected KVM exit {other:?}",
                    self.id
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn gdt_segments_decode_to_flat_32bit() {
        let cs = segment_from_gdt(GDT[1], 1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.db, cs.s, cs.g, cs.l),
            (0xb, 1, 1, 1, 1, 0)
        );
        let ds = segment_from_gdt(GDT[2], 2);
        assert_eq!((ds.type_, ds.selector), (3, 16));
        let null = segment_from_gdt(GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn cpuid_gets_per_vcpu_apic_ids() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        filter_cpuid(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x1234);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 4, 3));
    }

    #[test]
    fn tsc_deadline_mode_is_offered_in_leaf_1_only() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0x1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ..Default::default()
            },
        ])
        .unwrap();
        offer_tsc_deadline(&mut c);
        let e = c.as_slice();
        assert_eq!(e[0].ecx, 0x1 | 1 << 24);
        assert_eq!(e[1].ecx, 0);
    }
}
