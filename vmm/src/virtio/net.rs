//! virtio-net backed by a tap file descriptor (virtio 1.1 section 5.1).
//!
//! capsa-vmm never opens or configures a tap itself: the monitor creates it
//! in the container's network namespace (IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR, a 12-byte vnet header, offloads off), joins it to the
//! namespace's interface and hands the open descriptor over. So the VMM
//! needs no namespace, no /dev/net/tun and no ioctl, and when the VMM dies
//! the tap goes with its last descriptor.
//!
//! Frames cross unchanged with their 12-byte `virtio_net_hdr_v1`: the tap
//! speaks the same header as the driver. So checksum and TCP segmentation
//! offloads cost nothing to pass on: on a real tap the device offers them
//! (both ways, as qemu and Firecracker do) and, once the driver has chosen,
//! tells the tap what the guest accepts (TUNSETOFFLOAD, the one ioctl the
//! VMM makes on it). A 64 KiB segment then crosses as one frame instead of
//! forty-five. Indirect descriptors let the driver post such large RX
//! buffers as one ring entry. Queues: 0 = RX, 1 = TX.
//!
//! The guest is untrusted: every chain is read and written through
//! virtio-queue's bounds-checked `Reader`/`Writer`; a TX frame shorter than
//! the header or longer than [`MAX_FRAME`] is dropped and counted, as is an
//! RX frame that does not fit the buffers the guest posted. When the guest
//! has posted no RX buffers the device stops watching the tap until the
//! guest notifies the RX queue, so a full tap cannot make the event loop
//! spin.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_NET: u32 = 1;
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// `virtio_net_hdr_v1`: what VERSION_1 drivers put before every frame.
pub const HDR_LEN: usize = 12;
/// The largest frame with its header (64 KiB of payload, an Ethernet
/// header with a VLAN tag, the vnet header), as Firecracker allows.
pub const MAX_FRAME: usize = HDR_LEN + 65_550;
/// Offset of `num_buffers` in the header: always 1 here (no MRG_RXBUF).
const NUM_BUFFERS: usize = 10;
/// The offloads offered on a tap: the guest may hand over partial
/// checksums and 64 KiB TCP segments, and take them.
const OFFLOADS: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6;

/// What went through the device, and what it refused. Drops are counted,
/// never fatal: a guest that sends garbage loses its garbage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX chains shorter than the header, longer than MAX_FRAME, or not
    /// readable from guest memory.
    pub tx_malformed: u64,
    /// TX frames the tap would not take (its queue was full, or an error).
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// RX frames larger than the buffers the guest posted.
    pub rx_dropped: u64,
}

pub struct Net {
    tap: File,
    /// Holds the tap while the device wants its frames; the event loop
    /// watches this epoll (level-triggered, like every backend fd).
    epoll: Epoll,
    watching: bool,
    /// The backend is a tap that takes TUNSETOFFLOAD (not, e.g., the
    /// tests' socket pair): offloads are offered.
    offloads: bool,
    config: [u8; 12],
    /// A frame read from the tap that found no RX buffer yet.
    pending: Option<usize>,
    frame: Vec<u8>,
    counters: Counters,
    active: Option<ActiveQueues>,
}

impl Net {
    /// A device on `tap` (non-blocking, with the 12-byte vnet header).
    pub fn new(tap: File, mac: [u8; 6], mtu: u16) -> std::io::Result<Net> {
        set_nonblocking(tap.as_raw_fd())?;
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let offloads = set_tap_offloads(tap.as_raw_fd(), 0).is_ok();
        let mut net = Net {
            tap,
            epoll: Epoll::new()?,
            watching: false,
            offloads,
            config,
            pending: None,
            frame: vec![0u8; MAX_FRAME],
            counters: Counters::default(),
            active: None,
        };
        net.watch(true)?;
        Ok(net)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Starts or stops watching the tap for frames.
    fn watch(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.watching {
            return Ok(());
        }
        let fd = self.tap.as_raw_fd();
        if on {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())?;
        }
        self.watching = on;
        Ok(())
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.queues.get_mut(TXQ) else {
            return;
        };
        let mut used = false;
        // One pass over the ring per notification.
        for _ in 0..q.size() {
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_frame(&a.mem, chain, &mut self.frame) {
                Some(len) => match (&self.tap).write(&self.frame[..len]) {
                    Ok(_) => {
                        self.counters.tx_frames += 1;
                        self.counters.tx_bytes += (len - HDR_LEN) as u64;
                    }
                    Err(e) => {
                        self.counters.tx_dropped += 1;
                        tracing::debug!("virtio-net: tap refused a frame: {e}");
                    }
                },
                None => self.counters.tx_malformed += 1,
            }
            if q.add_used(&a.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        if used && q.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap into the guest's RX buffers, at most one
    /// ring's worth per call (the level-triggered epoll calls again).
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.queues.get_mut(RXQ) else {
            return;
        };
        let mut used = false;
        let mut out_of_buffers = false;
        for _ in 0..q.size() {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match (&self.tap).read(&mut self.frame) {
                    Ok(n) if n >= HDR_LEN => n,
                    // A runt from the backend: nothing to deliver.
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!("virtio-net: reading the tap: {e}");
                        break;
                    }
                },
            };
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                self.pending = Some(len);
                out_of_buffers = true;
                break;
            };
            let head = chain.head_index();
            self.frame[NUM_BUFFERS..HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let written = match chain.writer(&a.mem) {
                Ok(mut w) if w.available_bytes() >= len => {
                    w.write_all(&self.frame[..len]).ok().map(|_| len as u32)
                }
                _ => None,
            };
            match written {
                Some(n) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += (len - HDR_LEN) as u64;
                    used |= q.add_used(&a.mem, head, n).is_ok();
                }
                None => {
                    // Too small or broken: the frame is lost, the buffer
                    // goes back empty.
                    self.counters.rx_dropped += 1;
                    used |= q.add_used(&a.mem, head, 0).is_ok();
                }
            }
        }
        if used && q.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        if let Err(e) = self.watch(!out_of_buffers) {
            tracing::warn!("virtio-net: watching the tap: {e}");
        }
    }
}

/// Copies a TX chain (header and frame) into `buf`; `None` when it is not
/// a frame: unreadable, shorter than the header, or too long.
fn read_frame(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Option<usize> {
    let mut r = chain.reader(mem).ok()?;
    let len = r.available_bytes();
    if !(HDR_LEN..=buf.len()).contains(&len) {
        return None;
    }
    r.read_exact(&mut buf[..len]).ok()?;
    Some(len)
}

/// What the tap may hand the guest, from the features the driver took.
fn tun_offloads(acked: u64) -> libc::c_uint {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        // Segmentation offloads need the checksum one (as in the kernel).
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

fn set_tap_offloads(fd: RawFd, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; a descriptor that is
    // not a tap answers with an error.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor this device owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn name(&self) -> &str {
        "virtio-net"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        let base = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS;
        if self.offloads {
            base | OFFLOADS
        } else {
            base
        }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        let active = ActiveQueues::new(mem, queues, interrupt, 2, &[RXQ, TXQ], "virtio-net")?;
        if self.offloads {
            set_tap_offloads(self.tap.as_raw_fd(), tun_offloads(acked))
                .map_err(|e| format!("setting the tap's offloads: {e}"))?;
        }
        self.active = Some(active);
        self.process_rx();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
        // Frames keep arriving while the driver is away: read and drop them
        // (process_rx with no active queues does nothing, so stop watching).
        let _ = self.watch(false);
    }
    fn process_queue(&mut self, index: usize) {
        match index {
            RXQ => self.process_rx(),
            TXQ => self.process_tx(),
            _ => {}
        }
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }
    fn process_backend(&mut self) {
        if self.active.is_some() {
            self.process_rx();
        } else {
            // No driver: nobody to give frames to. Stop watching until
            // one activates the device.
            let _ = self.watch(false);
        }
    }
}

#[cfg(test)]
mod tests;
