//! virtio-net against a unix datagram socket pair standing in for the tap:
//! message boundaries hold as on a tap, no root is needed, and the test
//! plays the network on the other end.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::testutil::memory;

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x59, 0x00, 0x02];
const W: u32 = VRING_DESC_F_WRITE;

/// The network end of the pair, plus the device on the other end.
fn pair() -> (Net, UnixDatagram) {
    let (dev, net) = UnixDatagram::pair().unwrap();
    net.set_nonblocking(true).unwrap();
    (
        Net::new(File::from(OwnedFd::from(dev)), MAC, 1500).unwrap(),
        net,
    )
}

fn d(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

/// A frame as the driver sends it: a zero header, then the bytes.
fn frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, dev: &mut Net) -> Self {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 16);
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        dev.activate(
            mem.clone(),
            VIRTIO_F_VERSION_1,
            vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            irq,
        )
        .unwrap();
        Rig { mem, rx, tx }
    }

    /// The used entries of `q` so far, as (head, len).
    fn used(q: &MockSplitQueue<'a, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        (0..q.used().idx().load())
            .map(|i| {
                let e = q.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }
}

fn backend_readable(dev: &Net) -> bool {
    let mut p = libc::pollfd {
        fd: dev.backend_fd().unwrap(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[test]
fn config_space_has_the_mac_link_up_and_mtu() {
    let (dev, _net) = pair();
    let mut cfg = [0u8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1500);
    let f = dev.features();
    assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
    assert_eq!(
        f & OFFLOADS,
        0,
        "a backend that is not a tap gets no offloads"
    );
    assert_ne!(f & (1 << VIRTIO_RING_F_INDIRECT_DESC), 0);
}

#[test]
fn the_tap_is_told_what_the_guest_takes() {
    let all = OFFLOADS;
    assert_eq!(
        tun_offloads(all),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    // Segments without the checksum offload would reach a guest that
    // cannot take them: none then.
    assert_eq!(tun_offloads(all & !(1 << VIRTIO_NET_F_GUEST_CSUM)), 0);
    assert_eq!(
        tun_offloads(1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4),
        libc::TUN_F_CSUM
    );
}

#[test]
fn a_tx_frame_split_over_descriptors_reaches_the_tap_whole() {
    let mem = memory();
    let (mut dev, net) = pair();
    let rig = Rig::new(&mem, &mut dev);
    let f = frame(100, 1);
    mem.write_slice(&f[..HDR_LEN], GuestAddress(0x10_0000))
        .unwrap();
    mem.write_slice(&f[HDR_LEN..], GuestAddress(0x11_0000))
        .unwrap();
    rig.tx
        .build_desc_chain(&[d(0x10_0000, HDR_LEN as u32, 0), d(0x11_0000, 100, 0)])
        .unwrap();
    dev.process_queue(TXQ);
    let mut got = vec![0u8; 4096];
    let n = net.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(Rig::used(&rig.tx).len(), 1);
    assert_eq!(dev.counters().tx_frames, 1);
    assert_eq!(dev.counters().tx_bytes, 100);
}

#[test]
fn malformed_and_oversized_tx_frames_are_dropped_and_counted() {
    let mem = memory();
    let (mut dev, net) = pair();
    let rig = Rig::new(&mem, &mut dev);
    // Shorter than the header; longer than MAX_FRAME (two descriptors of
    // 40 000 bytes); outside guest memory; device-writable only.
    rig.tx
        .add_desc_chains(
            &[
                d(0x10_0000, 8, 0),
                RawDescriptor::from(SplitDescriptor::new(
                    0x20_0000,
                    40_000,
                    virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                    2,
                )),
                d(0x21_0000, 40_000, 0),
                d(0xffff_0000_0000, 64, 0),
                d(0x10_0000, 64, W),
            ],
            0,
        )
        .unwrap();
    dev.process_queue(TXQ);
    let c = dev.counters();
    assert_eq!((c.tx_frames, c.tx_malformed), (0, 4), "{c:?}");
    // Every chain was completed, and nothing reached the network.
    assert_eq!(Rig::used(&rig.tx).len(), 4);
    let mut buf = [0u8; 16];
    assert!(net.recv(&mut buf).is_err());
    // The device still works afterwards.
    let f = frame(20, 9);
    mem.write_slice(&f, GuestAddress(0x30_0000)).unwrap();
    rig.tx
        .add_desc_chains(&[d(0x30_0000, f.len() as u32, 0)], 5)
        .unwrap();
    dev.process_queue(TXQ);
    let mut got = vec![0u8; 64];
    let n = net.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
}

#[test]
fn a_tx_frame_the_tap_refuses_is_dropped_not_retried() {
    let mem = memory();
    let (mut dev, net) = pair();
    drop(net); // the other end is gone: every write fails
    let rig = Rig::new(&mem, &mut dev);
    let f = frame(60, 3);
    mem.write_slice(&f, GuestAddress(0x10_0000)).unwrap();
    rig.tx
        .build_desc_chain(&[d(0x10_0000, f.len() as u32, 0)])
        .unwrap();
    dev.process_queue(TXQ);
    assert_eq!(dev.counters().tx_dropped, 1);
    assert_eq!(Rig::used(&rig.tx).len(), 1);
}

#[test]
fn rx_frames_fill_the_posted_buffers_and_too_small_ones_are_dropped() {
    let mem = memory();
    let (mut dev, net) = pair();
    let rig = Rig::new(&mem, &mut dev);
    // Buffer 0: too small for the 200-byte frame; buffer 1: header and
    // frame in two pieces.
    rig.rx
        .add_desc_chains(
            &[
                d(0x10_0000, 64, W),
                RawDescriptor::from(SplitDescriptor::new(
                    0x11_0000,
                    HDR_LEN as u32,
                    (W | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT) as u16,
                    2,
                )),
                d(0x12_0000, 2048, W),
            ],
            0,
        )
        .unwrap();
    let big = frame(200, 5);
    let small = frame(50, 6);
    net.send(&big).unwrap();
    net.send(&small).unwrap();
    dev.process_backend();
    let used = Rig::used(&rig.rx);
    assert_eq!(used, vec![(0, 0), (1, small.len() as u32)]);
    let mut got = vec![0u8; small.len()];
    mem.read_slice(&mut got[..HDR_LEN], GuestAddress(0x11_0000))
        .unwrap();
    mem.read_slice(&mut got[HDR_LEN..], GuestAddress(0x12_0000))
        .unwrap();
    assert_eq!(&got[HDR_LEN..], &small[HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    let c = dev.counters();
    assert_eq!((c.rx_frames, c.rx_dropped, c.rx_bytes), (1, 1, 50), "{c:?}");
}

#[test]
fn with_no_rx_buffers_the_device_stops_watching_the_tap_until_the_guest_posts() {
    let mem = memory();
    let (mut dev, net) = pair();
    let rig = Rig::new(&mem, &mut dev);
    let f = frame(80, 2);
    net.send(&f).unwrap();
    assert!(backend_readable(&dev));
    dev.process_backend();
    // The frame waits inside the device; the event loop would otherwise
    // spin on a readable tap.
    assert!(!backend_readable(&dev), "still watching with no buffers");
    assert_eq!(dev.counters().rx_frames, 0);
    rig.rx.build_desc_chain(&[d(0x10_0000, 2048, W)]).unwrap();
    dev.process_queue(RXQ);
    assert_eq!(Rig::used(&rig.rx), vec![(0, f.len() as u32)]);
    assert_eq!(dev.counters().rx_frames, 1);
    // Watching again: the next frame is seen.
    net.send(&f).unwrap();
    assert!(backend_readable(&dev));
    let _ = rig.mem;
}

#[test]
fn reset_drops_the_queues_and_stops_watching() {
    let mem = memory();
    let (mut dev, net) = pair();
    let _rig = Rig::new(&mem, &mut dev);
    dev.reset();
    net.send(&frame(10, 0)).unwrap();
    assert!(!backend_readable(&dev));
    dev.process_backend();
    assert_eq!(dev.counters(), Counters::default());
    let _ = net.as_raw_fd();
}
