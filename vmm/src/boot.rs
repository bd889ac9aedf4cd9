//! Guest memory creation and the PVH boot protocol: kernel, initramfs,
//! command line, `hvm_start_info` with its memory map, GDT, MP table.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, MemoryRegionAddress,
};

use crate::cow_file::CowFile;
use crate::error::{Error, Result};
use crate::layout::*;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE: u64 = 4096;

/// Allocates guest RAM of `mem_mib` MiB, skipping the 32-bit MMIO hole.
/// With `shared`, the RAM is one memfd mapped shared, so that a vhost-user
/// daemon (virtiofsd) can map the same pages from the descriptor it is
/// sent; otherwise it is private anonymous memory.
pub fn create_memory(mem_mib: u32, shared: bool) -> Result<GuestMemoryMmap> {
    let ranges = ram_ranges(u64::from(mem_mib) << 20);
    let memfd = if shared {
        Some(guest_memfd(u64::from(mem_mib) << 20)?)
    } else {
        None
    };
    let mut offset = 0u64;
    let mut with_files = Vec::new();
    for (a, l) in ranges {
        let file = match &memfd {
            Some(f) => Some(FileOffset::new(
                f.try_clone()
                    .map_err(|e| Error::Memory(format!("memfd: {e}")))?,
                offset,
            )),
            None => None,
        };
        with_files.push((GuestAddress(a), l as usize, file));
        offset += l;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(&with_files)
        .map_err(|e| Error::Memory(format!("{e}")))?;
    // Transparent huge pages where the host offers them: loading a 20 MiB
    // kernel then takes ten page faults instead of five thousand, and the
    // guest gets fewer TLB misses. Advice only; failure changes nothing.
    for region in mem.iter() {
        if let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: advising on a mapping we own, within its bounds.
            unsafe {
                libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE);
            }
        }
    }
    Ok(mem)
}

/// An anonymous, sealed-size memory file of `len` bytes for guest RAM.
fn guest_memfd(len: u64) -> Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is
    // new and owned by the File from here on.
    let fd = unsafe {
        libc::memfd_create(
            c"capsa-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)
        .map_err(|e| Error::Memory(format!("sizing guest memory: {e}")))?;
    // The daemon that maps it must not be able to shrink it under the VMM
    // (a SIGBUS in capsa-vmm) or grow it.
    // SAFETY: F_ADD_SEALS on a memfd we own.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    Ok(file)
}

/// A virtio-mmio device window announced to the guest.
#[derive(Debug, Clone, Copy)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub pvh_entry: GuestAddress,
    pub start_info: GuestAddress,
}

fn mem_err(what: &str) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error + '_ {
    move |e| Error::Memory(format!("{what}: {e}"))
}

/// End of the RAM below the MMIO hole.
fn low_mem_end(mem: &GuestMemoryMmap) -> u64 {
    let end = mem.last_addr().raw_value() + 1;
    end.min(MMIO_GAP_START)
}

/// Loads the kernel and initramfs, writes the command line, the PVH start
/// info, the GDT and the MP table. Returns the PVH entry point.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    mmio: &[MmioSlot],
    num_cpus: u8,
) -> Result<BootEntry> {
    let mut kfile = open_cow(kernel)?;
    let loaded =
        Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            Error::Kernel {
                path: kernel.to_owned(),
                msg: format!("{e} (capsa-vmm needs an uncompressed ELF vmlinux, not a bzImage)"),
            }
        })?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => {
            return Err(Error::Kernel {
                path: kernel.to_owned(),
                msg: "no PVH entry note (build the kernel with CONFIG_PVH=y)".into(),
            })
        }
    };
    let kernel_end = loaded.kernel_load.raw_value() + loaded.kernel_end;
    tracing::debug!(
        mapped = kfile.mapped,
        "kernel segments mapped copy-on-write"
    );

    // The initramfs goes at the top of low memory, page aligned.
    let module = match initrd {
        Some(path) => Some(load_initrd(mem, path, kernel_end)?),
        None => None,
    };

    // Command line, with the virtio-mmio devices appended.
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Boot(format!("cmdline: {e}")))?;
    cl.insert_str(cmdline)
        .map_err(|e| Error::Boot(format!("cmdline {cmdline:?}: {e}")))?;
    for slot in mmio {
        cl.add_virtio_mmio_device(slot.size, GuestAddress(slot.base), slot.irq, None)
            .map_err(|e| Error::Boot(format!("cmdline (virtio-mmio entries): {e}")))?;
    }
    let cl_bytes = cl
        .as_cstring()
        .map_err(|e| Error::Boot(format!("cmdline: {e}")))?
        .into_bytes_with_nul();
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| Error::Boot(format!("writing cmdline: {e}")))?;

    // PVH start info, memory map and module list.
    let mut memmap = vec![
        hvm_memmap_table_entry {
            addr: 0,
            size: EBDA_START,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            type_: E820_RESERVED,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIMEM_START,
            size: low_mem_end(mem) - HIMEM_START,
            type_: E820_RAM,
            reserved: 0,
        },
    ];
    let top = mem.last_addr().raw_value() + 1;
    if top > MMIO_GAP_END {
        memmap.push(hvm_memmap_table_entry {
            addr: MMIO_GAP_END,
            size: top - MMIO_GAP_END,
            type_: E820_RAM,
            reserved: 0,
        });
    }
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_ADDR
        } else {
            0
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some((addr, size)) = module {
        let m = hvm_modlist_entry {
            paddr: addr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[m], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| Error::Boot(format!("PVH boot info: {e}")))?;

    write_gdt(mem)?;
    crate::mptable::write(mem, MPTABLE_ADDR, num_cpus)?;
    tracing::debug!(
        entry = format_args!("{:#x}", entry.raw_value()),
        cmdline = %String::from_utf8_lossy(&cl_bytes[..cl_bytes.len() - 1]),
        "guest loaded"
    );
    Ok(BootEntry {
        pvh_entry: entry,
        start_info: GuestAddress(PVH_INFO_ADDR),
    })
}

/// Opens the kernel or initramfs for loading into guest memory.
fn open_cow(path: &Path) -> Result<CowFile> {
    File::open(path)
        .and_then(CowFile::new)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<(u64, u64)> {
    let mut f = open_cow(path)?;
    let size = f.size();
    let limit = low_mem_end(mem);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or_else(|| {
            Error::Boot(format!(
                "initramfs {} ({size} bytes) does not fit in guest memory above the kernel; raise --mem-mib",
                path.display()
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(mem_err("reading initramfs"))?;
    Ok((addr, size))
}

/// GDT entries (flags, base, limit) used at the PVH entry: null, 32-bit
/// code, data, TSS.
pub const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(mem_err("writing GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(mem_err("writing IDT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        // 32-bit flat code segment: base 0, limit 0xfffff, G and D set, type 0xb.
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn non_elf_kernel_is_rejected_with_a_clear_message() {
        let mem = create_memory(64, false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("bzImage");
        std::fs::write(&k, vec![0u8; 4096]).unwrap();
        let err = load(&mem, &k, None, "console=ttyS0", &[], 1).unwrap_err();
        assert!(err.to_string().contains("ELF vmlinux"), "{err}");
        let err = load(&mem, &dir.path().join("missing"), None, "", &[], 1).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    #[test]
    fn initrd_that_does_not_fit_is_rejected() {
        let mem = create_memory(16, false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path().join("initrd");
        std::fs::write(&i, vec![0u8; 17 << 20]).unwrap();
        assert!(load_initrd(&mem, &i, HIMEM_START).is_err());
        std::fs::write(&i, vec![7u8; 5000]).unwrap();
        let (addr, size) = load_initrd(&mem, &i, HIMEM_START).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % PAGE, 0);
        assert!(addr + size <= 16 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 7);
    }
}
