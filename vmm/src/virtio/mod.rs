//! virtio devices over the virtio-mmio transport (virtio 1.x, split queues).

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// `InterruptStatus` bit: a queue was used.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// The interrupt line of one device: an irqfd plus the status register the
/// driver reads to learn why it was interrupted.
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    vring_always: AtomicBool,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            evt,
            vring_always: AtomicBool::new(false),
        })
    }

    /// For a device whose backend raises the irqfd itself (vhost-user):
    /// the status register always says "a queue was used", so the driver
    /// looks at its queues on every interrupt (it finds nothing new when
    /// there is nothing, at no harm).
    pub fn report_vring_always(&self) {
        self.vring_always.store(true, Ordering::SeqCst);
    }

    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("raising virtio interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        let vring = if self.vring_always.load(Ordering::SeqCst) {
            INT_VRING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | vring
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = net, 2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    fn name(&self) -> &str;
    /// Maximum size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn features(&self) -> u64;
    /// Reads from the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called when the driver sets DRIVER_OK, with the features it accepted
    /// and the queues it configured (all validated against guest memory).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String>;
    /// Drops the queues and any per-activation state.
    fn reset(&mut self);
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize);
    /// A device whose queues another process serves (vhost-user) keeps
    /// copies of the queues' notification eventfds and returns true; the
    /// event loop then leaves those eventfds to that process.
    fn take_queue_notifiers(&mut self, _evts: &[EventFd]) -> std::io::Result<bool> {
        Ok(false)
    }
    /// A file descriptor the event loop must watch for this device
    /// (the vsock muxer's epoll fd), if any.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The backend fd became readable.
    fn process_backend(&mut self) {}
}

/// A multi-queue device's state while a driver runs it: guest memory, the
/// queues the driver set up, and the device's interrupt.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

impl ActiveQueues {
    /// Takes the queues from `activate`; each index in `needed` must be
    /// one the driver made ready.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        count: usize,
        needed: &[usize],
        what: &str,
    ) -> Result<Self, String> {
        if queues.len() != count || needed.iter().any(|&i| !queues[i].ready()) {
            return Err(format!("{what} needs its queues {needed:?} ready"));
        }
        Ok(ActiveQueues {
            mem,
            queues,
            interrupt,
        })
    }
}

/// Copies a little-endian config structure into a config-space read.
/// Reads past the end return zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared helpers for device tests: guest memory and a queue test driver.
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }
}
