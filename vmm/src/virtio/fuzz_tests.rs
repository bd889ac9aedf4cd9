//! Randomised guests: descriptor tables, avail rings and buffers filled
//! with random values (addresses inside, across and far outside guest
//! memory, huge lengths, random NEXT/WRITE/INDIRECT flags, loops, bogus
//! avail indexes). The devices must never panic and must stay usable.
//! (Completed-chain counts cannot be checked from guest memory: a random
//! writable buffer may legitimately point at the used ring itself.)

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::Block;
use super::testutil::memory;
use super::vsock::Vsock;
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const QSIZE: u16 = 16;
const MEM_END: u64 = 0x40_0000;

/// xorshift64*: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The rounds a test runs: 400 in the suite; with `CAPSA_FUZZ_SECONDS=N`
/// (a long run outside it) as many as fit in N seconds, the generator
/// going on from the same seed, and how many ran is printed.
fn rounds(test: &'static str) -> impl Iterator<Item = u64> {
    let budget = std::env::var("CAPSA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let limit = if budget.is_some() { u64::MAX } else { 400 };
    (0..limit).take_while(move |&i| match budget {
        Some(end) if std::time::Instant::now() >= end => {
            eprintln!("{test}: {i} rounds, no panic");
            false
        }
        _ => true,
    })
}

fn random_addr(r: &mut Rng) -> u64 {
    match r.below(8) {
        0 => r.next(),                       // anywhere
        1 => MEM_END - r.below(64),          // straddling the end
        2 => u64::MAX - r.below(4096),       // overflow territory
        _ => 0x10_0000 + r.below(0x20_0000), // a plausible buffer
    }
}

fn random_len(r: &mut Rng) -> u32 {
    match r.below(8) {
        0 => 0,
        1 => u32::MAX - r.below(16) as u32,
        2 => r.below(1 << 22) as u32,
        _ => r.below(4200) as u32,
    }
}

/// Fills the queue with random descriptors and a random avail ring.
fn scramble(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, r: &mut Rng) {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    for i in 0..QSIZE {
        let mut flags = 0u16;
        if r.below(2) == 0 {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        if r.below(2) == 0 {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if r.below(10) == 0 {
            flags |= VRING_DESC_F_INDIRECT as u16;
        }
        let next = r.below(u64::from(QSIZE) + 4) as u16;
        let d = SplitDescriptor::new(random_addr(r), random_len(r), flags, next);
        vq.desc_table().store(i, RawDescriptor::from(d)).unwrap();
        vq.avail()
            .ring()
            .ref_at(i as usize)
            .unwrap()
            .store(r.below(u64::from(QSIZE) + 4) as u16);
    }
    vq.avail().idx().store(r.below(40) as u16);
    // Random bytes where the buffers usually point (headers, payloads).
    for _ in 0..64 {
        let addr = 0x10_0000 + r.below(0x20_0000);
        let _ = mem.write_obj(r.next(), GuestAddress(addr));
    }
}

fn irq() -> Arc<Interrupt> {
    Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())
}

#[test]
fn block_survives_random_queues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let mem = memory();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for read_only in [false, true] {
        let mut dev = Block::open(&path, read_only).unwrap();
        for _ in rounds("block") {
            let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), QSIZE);
            scramble(&mem, &vq, &mut r);
            let q: Queue = vq.create_queue().unwrap();
            dev.reset();
            dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![q], irq())
                .unwrap();
            dev.process_queue(0);
        }
        // Still a working disk: a proper GET_ID request completes.
        let _ = mem.write_slice(&[0u8; 0x10000], GuestAddress(0));
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), QSIZE);
        let hdr = super::block::RequestHeader {
            type_: virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID,
            reserved: 0,
            sector: 0,
        };
        mem.write_obj(hdr, GuestAddress(0x30_0000)).unwrap();
        let w = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        vq.build_desc_chain(&[
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 16, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_1000, 20, w, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_2000, 1, w, 0)),
        ])
        .unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x30_2000)).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        dev.reset();
        dev.activate(mem.clone(), VIRTIO_F_VERSION_1, vec![q], irq())
            .unwrap();
        dev.process_queue(0);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_2000)).unwrap(), 0);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * 1024);
}

#[test]
fn vsock_survives_random_queues() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let mut dev = Vsock::new(3, &dir.path().join("v.sock")).unwrap();
    let mut r = Rng(0x1234_5678_9abc_def1);
    for i in rounds("vsock") {
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), QSIZE);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), QSIZE);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0xf000), QSIZE);
        scramble(&mem, &rx, &mut r);
        scramble(&mem, &tx, &mut r);
        // Sometimes a well-formed-looking header, to get past the parser.
        if i % 3 == 0 {
            let mut h = [0u8; 44];
            h[0..8].copy_from_slice(&3u64.to_le_bytes());
            h[8..16].copy_from_slice(&2u64.to_le_bytes());
            h[16..20].copy_from_slice(&(r.below(4) as u32).to_le_bytes());
            h[20..24].copy_from_slice(&(r.below(4) as u32).to_le_bytes());
            h[24..28].copy_from_slice(&(r.below(100) as u32).to_le_bytes());
            h[28..30].copy_from_slice(&1u16.to_le_bytes());
            h[30..32].copy_from_slice(&(r.below(9) as u16).to_le_bytes());
            let d = SplitDescriptor::new(0x30_0000, 44, 0, 0);
            mem.write_slice(&h, GuestAddress(0x30_0000)).unwrap();
            tx.desc_table().store(0, RawDescriptor::from(d)).unwrap();
        }
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        dev.reset();
        dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues, irq())
            .unwrap();
        dev.process_queue(1);
        dev.process_queue(0);
        dev.process_backend();
    }
    // Reset still brings the device back to a clean state.
    dev.reset();
    assert_eq!(dev.muxer().connection_count(), 0);
}

#[test]
fn net_survives_random_queues() {
    use std::os::unix::net::UnixDatagram;
    let mem = memory();
    let (dev_end, net_end) = UnixDatagram::pair().unwrap();
    net_end.set_nonblocking(true).unwrap();
    let tap = std::fs::File::from(std::os::fd::OwnedFd::from(dev_end));
    let mut dev = super::net::Net::new(tap, [2, 0, 0, 0, 0, 1], 1500).unwrap();
    let mut r = Rng(0x0bad_cafe_f00d_d00d);
    let mut buf = vec![0u8; 70_000];
    for _ in rounds("net") {
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), QSIZE);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x8000), QSIZE);
        scramble(&mem, &rx, &mut r);
        scramble(&mem, &tx, &mut r);
        // Frames from the network of random sizes, runts included.
        for _ in 0..r.below(4) {
            let len = r.below(3000) as usize;
            let _ = net_end.send(&buf[..len]);
        }
        let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        dev.reset();
        dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues, irq())
            .unwrap();
        dev.process_queue(1);
        dev.process_queue(0);
        dev.process_backend();
        while net_end.recv(&mut buf).is_ok() {}
    }
    // Whatever it took or refused, it was counted, never a panic.
    let c = dev.counters();
    assert!(c.tx_frames + c.tx_malformed + c.tx_dropped > 0, "{c:?}");
}
