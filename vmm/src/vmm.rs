//! The `Vmm`: builds a microVM from a [`VmConfig`] and runs it.
//!
//! Threads: one per vCPU (register exits, port I/O and MMIO dispatch), and
//! the calling thread, which runs the event loop: virtqueue notifications
//! (KVM ioeventfds), the vsock backend, console input, and the exit event.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{self, MmioSlot};
use crate::config::{SerialConfig, VmConfig};
use crate::cpu::{self, VcpuRunner};
use crate::devices::i8042::{self, I8042};
use crate::devices::serial::{ConsoleWriter, SerialDevice, COM1_LEN, COM1_PORT};
use crate::devices::{Bus, BusDevice, VmEvents};
use crate::error::{Error, Result};
use crate::layout::*;
use crate::virtio::block::Block;
use crate::virtio::fs::Fs;
use crate::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::virtio::net::Net;
use crate::virtio::vsock::Vsock;

pub use crate::devices::VmmExit;

const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The vCPU kick signal: interrupts KVM_RUN so a vCPU sees the stop flag.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Options that are about running capsa-vmm, not about the VM.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub report_first_run: bool,
    pub exit_after_first_run: bool,
    /// Install the per-thread seccomp filters (on unless --no-seccomp).
    pub seccomp: bool,
}

pub struct Vmm {
    _kvm: Kvm,
    _vm: VmFd,
    mem: GuestMemoryMmap,
    events: Arc<VmEvents>,
    serial: Arc<Mutex<SerialDevice>>,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    console_input: bool,
    /// Some device is served by a vhost-user daemon.
    vhost_user: bool,
    opts: RunOptions,
    started: Instant,
}

// SIGTERM/SIGINT handling: the handler may only do async-signal-safe
// things, so it sets a flag and writes to the exit eventfd.
static EXIT_EVT_FD: AtomicI32 = AtomicI32::new(-1);
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
    let fd = EXIT_EVT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) on an eventfd with an 8-byte buffer we own.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_kick(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {}

fn install_term_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installing a handler that only touches atomics and write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_term as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

impl Vmm {
    /// Creates the VM, its memory and devices, loads the guest and
    /// configures the vCPUs. Nothing runs yet.
    pub fn build(cfg: &VmConfig, opts: RunOptions) -> Result<Vmm> {
        let started = Instant::now();
        let step =
            |what: &str| tracing::debug!(us = started.elapsed().as_micros() as u64, "{what}");
        cfg.validate().map_err(Error::Config)?;
        crate::pvm::check(cfg.allow_pvm)?;
        let kvm = open_kvm()?;
        let (vm, mem) = create_vm(&kvm, cfg.mem_mib, !cfg.fs.is_empty())?;
        step("VM created");
        let events = Arc::new(VmEvents::new()?);
        let (pio, serial) = legacy_devices(&vm, &cfg.serial, &events)?;
        let (mmio, slots, virtio) = virtio_devices(&vm, &mem, cfg, &events)?;
        step("devices created");
        let cmdline = cfg
            .cmdline
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_CMDLINE);
        let entry = boot::load(
            &mem,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            cmdline,
            &slots,
            cfg.vcpus,
        )?;
        step("guest loaded");
        let vcpus = create_vcpus(&kvm, &vm, cfg.vcpus, entry)?;
        // Console input only when a person is typing at it.
        let console_input =
            matches!(cfg.serial, SerialConfig::Stdout) && std::io::stdin().is_terminal();
        tracing::info!(
            vcpus = cfg.vcpus,
            mem_mib = cfg.mem_mib,
            devices = virtio.len(),
            setup_us = started.elapsed().as_micros() as u64,
            "VM built"
        );
        Ok(Vmm {
            _kvm: kvm,
            _vm: vm,
            mem,
            events,
            serial,
            virtio,
            vcpus,
            pio,
            mmio,
            console_input,
            vhost_user: !cfg.fs.is_empty(),
            opts,
            started,
        })
    }

    /// The shared exit state (console tail for error messages).
    pub fn events(&self) -> &Arc<VmEvents> {
        &self.events
    }

    /// Host address ranges of guest memory, to tell the VMM's own memory
    /// use apart from the guest's.
    pub fn guest_host_ranges(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .filter_map(|r| {
                let a = r.get_host_address(MemoryRegionAddress(0)).ok()? as u64;
                Some((a, a + r.len()))
            })
            .collect()
    }

    /// How long a panicked guest gets to reset itself before the panic
    /// alone ends the VM (its kernel can hang on the way to the reset).
    const PANIC_RESET_GRACE: Duration = Duration::from_secs(10);

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<VmmExit> {
        let exit_fd = self.events.exit_evt().as_raw_fd();
        EXIT_EVT_FD.store(exit_fd, Ordering::SeqCst);
        install_term_handlers();
        register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| Error::Boot(format!("installing vCPU kick signal: {e}")))?;

        let epoll = Epoll::new()?;
        const EXIT_TOKEN: u64 = 0;
        const STDIN_TOKEN: u64 = 1;
        const PANIC_TOKEN: u64 = 4;
        const QUEUE_TAG: u64 = 2 << 32;
        const BACKEND_TAG: u64 = 3 << 32;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(exit_fd, EXIT_TOKEN)?;
        add(self.events.panic_evt().as_raw_fd(), PANIC_TOKEN)?;
        if self.console_input && add(0, STDIN_TOKEN).is_err() {
            self.console_input = false;
        }
        for (d, t) in self.virtio.iter().enumerate() {
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            if !t.queues_served_elsewhere() {
                for (q, evt) in t.queue_evts().iter().enumerate() {
                    add(evt.as_raw_fd(), QUEUE_TAG | ((d as u64) << 8) | q as u64)?;
                }
            }
            if let Some(fd) = t.device().backend_fd() {
                add(fd, BACKEND_TAG | d as u64)?;
            }
        }

        let mut handles: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let runner = VcpuRunner {
                id: id as u8,
                vcpu,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                events: self.events.clone(),
                report_first_run: self.opts.report_first_run,
                exit_after_first_run: self.opts.exit_after_first_run,
                seccomp: self.opts.seccomp,
                vhost_user: self.vhost_user,
                started: self.started,
            };
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || runner.run())?;
            handles.push(h);
        }

        if self.opts.seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::Thread::EventLoop) {
                self.events
                    .request_exit(VmmExit::VmmError(format!("event loop: {e}")));
            }
        }
        let mut evs = [EpollEvent::default(); 32];
        // When the guest kernel panicked (panic=-1 resets at once), the
        // time it did; should the reset not come, the panic ends the VM.
        let mut panicked_at: Option<Instant> = None;
        while !self.events.should_stop() {
            let timeout = if panicked_at.is_some() { 500 } else { -1 };
            let n = match epoll.wait(timeout, &mut evs) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.events
                        .request_exit(VmmExit::VmmError(format!("epoll: {e}")));
                    break;
                }
            };
            if TERMINATED.load(Ordering::SeqCst) {
                self.events.request_exit(VmmExit::Terminated);
            }
            if panicked_at.is_some_and(|t| t.elapsed() >= Self::PANIC_RESET_GRACE) {
                self.events.request_exit(VmmExit::GuestPanic);
            }
            for ev in &evs[..n] {
                let token = ev.data();
                match token {
                    EXIT_TOKEN => {
                        let _ = self.events.exit_evt().read();
                    }
                    PANIC_TOKEN => {
                        let _ = self.events.panic_evt().read();
                        panicked_at.get_or_insert_with(Instant::now);
                    }
                    STDIN_TOKEN => self.console_in(&epoll),
                    t if t & QUEUE_TAG == QUEUE_TAG && t & BACKEND_TAG != BACKEND_TAG => {
                        let d = ((t >> 8) & 0xff) as usize;
                        let q = (t & 0xff) as usize;
                        if let Some(dev) = self.virtio.get(d) {
                            let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(evt) = dev.queue_evts().get(q) {
                                let _ = evt.read();
                            }
                            dev.notify(q);
                        }
                    }
                    t if t & BACKEND_TAG == BACKEND_TAG => {
                        let d = (t & 0xff) as usize;
                        if let Some(dev) = self.virtio.get(d) {
                            // Before activation the backend still accepts
                            // and queues; RX waits for the driver.
                            let mut dev = dev.lock().unwrap_or_else(|e| e.into_inner());
                            dev.device_mut().process_backend();
                        }
                    }
                    _ => {}
                }
            }
        }

        stop_vcpus(handles);
        let why = self.events.exit_reason().unwrap_or(VmmExit::VmmError(
            "event loop ended without a reason".into(),
        ));
        if self.opts.report_first_run {
            if let Some(r) = rss_kib(&self.guest_host_ranges()) {
                eprintln!(
                    "capsa-vmm: rss_total_kib={} rss_guest_kib={} rss_vmm_kib={} rss_vmm_anon_kib={}",
                    r.total,
                    r.guest,
                    r.total.saturating_sub(r.guest),
                    r.vmm_anon
                );
            }
        }
        Ok(why)
    }

    fn console_in(&mut self, epoll: &Epoll) {
        let mut buf = [0u8; 64];
        let cap = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_capacity()
            .min(buf.len());
        // When the guest is not reading (FIFO full) one byte is still read
        // and dropped, so that a level-triggered stdin cannot spin us.
        match std::io::stdin().lock().read(&mut buf[..cap.max(1)]) {
            Ok(0) | Err(_) => {
                let _ = epoll.ctl(ControlOperation::Delete, 0, EpollEvent::default());
                self.console_input = false;
            }
            Ok(n) => {
                self.serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&buf[..n]);
            }
        }
    }
}

/// Interrupts the vCPU threads until each has left KVM_RUN and exited.
fn stop_vcpus(handles: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in &handles {
        while !h.is_finished() && Instant::now() < deadline {
            let _ = h.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for h in handles {
        if h.is_finished() {
            let _ = h.join();
        } else {
            tracing::warn!("a vCPU thread did not stop in time");
        }
    }
}

/// Memory of this process from /proc/self/smaps, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct RssReport {
    /// All resident pages.
    pub total: u64,
    /// Resident pages of guest memory.
    pub guest: u64,
    /// Anonymous (heap, stacks, page tables aside) pages outside guest
    /// memory: what this VMM adds that no other process shares.
    pub vmm_anon: u64,
}

pub fn rss_kib(guest: &[(u64, u64)]) -> Option<RssReport> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut total, mut in_guest, mut anon) = (0u64, 0u64, 0u64);
    let mut current_is_guest = false;
    let mut current_name = String::new();
    let mut by_mapping: Vec<(u64, String)> = Vec::new();
    for line in smaps.lines() {
        if let Some((range, rest)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    current_is_guest = guest.iter().any(|&(s, e)| a >= s && b <= e);
                    current_name = rest
                        .split_whitespace()
                        .nth(4)
                        .unwrap_or("[anon]")
                        .to_string();
                    continue;
                }
            }
        }
        if let Some(v) = line.strip_prefix("Anonymous:") {
            if !current_is_guest {
                anon += v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kib;
            if current_is_guest {
                in_guest += kib;
            } else {
                by_mapping.push((kib, current_name.clone()));
            }
        }
    }
    by_mapping.sort_by_key(|m| std::cmp::Reverse(m.0));
    tracing::debug!(top = ?&by_mapping[..by_mapping.len().min(8)], "VMM RSS by mapping (KiB)");
    Some(RssReport {
        total,
        guest: in_guest,
        vmm_anon: anon,
    })
}

/// Opens /dev/kvm and checks the capabilities capsa-vmm relies on.
fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    for (cap, name) in [
        (Cap::Irqchip, "IRQCHIP"),
        (Cap::Irqfd, "IRQFD"),
        (Cap::Ioeventfd, "IOEVENTFD"),
        (Cap::UserMemory, "USER_MEMORY"),
        (Cap::Pit2, "PIT2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::Config(format!("KVM lacks KVM_CAP_{name}")));
        }
    }
    Ok(kvm)
}

/// The VM with its guest memory registered and its in-kernel irqchip and
/// PIT.
fn create_vm(kvm: &Kvm, mem_mib: u32, shared_mem: bool) -> Result<(VmFd, GuestMemoryMmap)> {
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    // Guest memory before the irqchip: with an in-kernel irqchip present
    // each memslot update costs milliseconds (measured 5-7 ms on these
    // machines, against 0.1 ms before it). Not under TCG (crate::tcg).
    let irqchip_first = crate::tcg::emulated();
    if irqchip_first {
        create_irqchip(&vm)?;
    }
    let mem = boot::create_memory(mem_mib, shared_mem)?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(format!("{e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region stays mapped for as long as the VM exists
        // (the Vmm owns both and drops the VM first).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    if !irqchip_first {
        create_irqchip(&vm)?;
    }
    Ok((vm, mem))
}

fn create_irqchip(vm: &VmFd) -> Result<()> {
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// The devices on port I/O: the serial console (COM1) and the i8042 (its
/// reset line is how the guest reboots).
fn legacy_devices(
    vm: &VmFd,
    serial_cfg: &SerialConfig,
    events: &Arc<VmEvents>,
) -> Result<(Bus, Arc<Mutex<SerialDevice>>)> {
    let mut pio = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
    let sink: Option<Box<dyn std::io::Write + Send>> = match serial_cfg {
        SerialConfig::Stdout => Some(ConsoleWriter::stdout_sink()?),
        SerialConfig::None => None,
        SerialConfig::File(p) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| Error::Open {
                    path: p.clone(),
                    source,
                })?,
        )),
    };
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        ConsoleWriter::new(sink, events.clone()),
    )));
    pio.insert(serial.clone(), COM1_PORT, COM1_LEN)
        .map_err(Error::Boot)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(events.clone()))),
        i8042::PORT_BASE,
        i8042::PORT_LEN,
    )
    .map_err(Error::Boot)?;
    Ok((pio, serial))
}

type VirtioDevices = (Bus, Vec<MmioSlot>, Vec<Arc<Mutex<MmioTransport>>>);

/// The virtio-mmio devices: disks first (vda, vdb, ... in config order),
/// then vsock, then the network interfaces (eth0, ...), then the virtio-fs
/// shares, each in its slot with its irqfd and queue ioeventfds.
fn virtio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    events: &Arc<VmEvents>,
) -> Result<VirtioDevices> {
    let mut devices: Vec<Box<dyn crate::virtio::VirtioDevice>> = Vec::new();
    for d in &cfg.disks {
        let blk = Block::open(&d.path, d.read_only).map_err(|source| Error::Open {
            path: d.path.clone(),
            source,
        })?;
        devices.push(Box::new(blk));
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(u64::from(v.cid), &v.uds).map_err(|e| Error::Device {
            dev: "vsock".into(),
            msg: e.to_string(),
        })?;
        devices.push(Box::new(dev));
    }
    for n in &cfg.nets {
        devices.push(Box::new(net_device(n)?));
    }
    for f in &cfg.fs {
        let dev = Fs::connect(&f.socket, &f.tag, events.clone()).map_err(|msg| Error::Device {
            dev: format!("virtio-fs {}", f.tag),
            msg,
        })?;
        devices.push(Box::new(dev));
    }
    let mut mmio = Bus::new();
    let mut slots = Vec::new();
    let mut virtio = Vec::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let slot = MmioSlot {
            base: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_IRQ_BASE + i as u32,
        };
        let name = dev.name().to_string();
        let irq = EventFd::new(EFD_NONBLOCK)?;
        vm.register_irqfd(&irq, slot.irq)
            .map_err(Error::kvm("KVM_IRQFD (virtio)"))?;
        let t = MmioTransport::new(dev, mem.clone(), irq).map_err(|e| Error::Device {
            dev: name.clone(),
            msg: e.to_string(),
        })?;
        for (q, evt) in t.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(slot.base + REG_QUEUE_NOTIFY),
                q as u32,
            )
            .map_err(Error::kvm("KVM_IOEVENTFD"))?;
        }
        let t = Arc::new(Mutex::new(t));
        mmio.insert(t.clone() as Arc<Mutex<dyn BusDevice>>, slot.base, slot.size)
            .map_err(Error::Boot)?;
        slots.push(slot);
        virtio.push(t);
    }
    Ok((mmio, slots, virtio))
}

/// The vCPUs, each configured to enter the guest at `entry`.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: u8, entry: boot::BootEntry) -> Result<Vec<VcpuFd>> {
    let base_cpuid = cpu::supported_cpuid(kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        cpu::configure(&vcpu, id, count, &base_cpuid, entry)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// A virtio-net device on the tap descriptor capsa-vmm inherited.
fn net_device(n: &crate::config::NetConfig) -> Result<Net> {
    let err = |msg: String| Error::Device {
        dev: format!("virtio-net (tap fd {})", n.tap_fd),
        msg,
    };
    let mac = crate::config::parse_mac(&n.mac).map_err(err)?;
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if unsafe { libc::fcntl(n.tap_fd, libc::F_GETFD) } < 0 {
        return Err(err("the descriptor is not open in capsa-vmm".into()));
    }
    // SAFETY: the descriptor is open and was handed to this process for
    // this device alone (the config names it once); the device owns it now.
    let tap = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(n.tap_fd) };
    Net::new(tap, mac, n.mtu).map_err(|e| err(e.to_string()))
}
