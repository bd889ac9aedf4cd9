//! Device-level tests: a test driver plays the guest through the virtqueues
//! in guest memory, real unix sockets play the host.

use super::muxer::*;
use super::*;
use crate::virtio::testutil::memory;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 16;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const BUF: u64 = 0x1000;

#[derive(Debug, Clone, Default, PartialEq)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn to_bytes(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
    fn from_bytes(b: &[u8; 44]) -> Hdr {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        Hdr {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes(b[28..30].try_into().unwrap()),
            op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
    /// A guest -> host stream packet.
    fn guest(src_port: u32, dst_port: u32, op: u16) -> Hdr {
        Hdr {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Default::default()
        }
    }
}

fn raw(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

/// The guest side: owns the three queues in guest memory.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_given: u16,
    rx_seen: u16,
    tx_given: u16,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> (Guest<'a>, Vec<Queue>) {
        let rxq = MockSplitQueue::create(mem, GuestAddress(0x1000), QSIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x8000), QSIZE);
        let evq = MockSplitQueue::create(mem, GuestAddress(0xf000), QSIZE);
        let queues = vec![
            rxq.create_queue().unwrap(),
            txq.create_queue().unwrap(),
            evq.create_queue().unwrap(),
        ];
        (
            Guest {
                mem,
                rxq,
                txq,
                rx_given: 0,
                rx_seen: 0,
                tx_given: 0,
            },
            queues,
        )
    }

    /// Adds `n` RX buffers: a 44-byte header descriptor and a data descriptor.
    fn give_rx(&mut self, n: u16, data_len: u32) {
        for _ in 0..n {
            let slot = self.rx_given % (QSIZE / 2);
            let base = RX_BUFS + u64::from(slot) * 2 * BUF;
            self.rxq
                .add_desc_chains(
                    &[
                        RawDescriptor::from(SplitDescriptor::new(
                            base,
                            44,
                            (VRING_DESC_F_WRITE | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT)
                                as u16,
                            slot * 2 + 1,
                        )),
                        raw(base + BUF, data_len, VRING_DESC_F_WRITE),
                    ],
                    slot * 2,
                )
                .unwrap();
            self.rx_given += 1;
        }
    }

    /// Packets the device put in the RX queue since the last call.
    fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut out = Vec::new();
        let used_idx = self.rxq.used().idx().load();
        while self.rx_seen != used_idx {
            let e = self
                .rxq
                .used()
                .ring()
                .ref_at((self.rx_seen % QSIZE) as usize)
                .unwrap()
                .load();
            let base = RX_BUFS + u64::from(e.id() as u16 / 2) * 2 * BUF;
            let mut hb = [0u8; 44];
            self.mem.read_slice(&mut hb, GuestAddress(base)).unwrap();
            let h = Hdr::from_bytes(&hb);
            assert_eq!(e.len(), 44 + h.len, "used length = header + payload");
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + BUF))
                .unwrap();
            out.push((h, data));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Queues one TX packet (header and optional data descriptor).
    fn send(&mut self, dev: &mut Vsock, h: &Hdr, data: &[u8]) {
        let slot = self.tx_given % (QSIZE / 2);
        let base = TX_BUFS + u64::from(slot) * 2 * BUF;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(base + BUF))
            .unwrap();
        let descs = if data.is_empty() {
            vec![raw(base, 44, 0)]
        } else {
            vec![
                RawDescriptor::from(SplitDescriptor::new(
                    base,
                    44,
                    virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                    slot * 2 + 1,
                )),
                raw(base + BUF, data.len() as u32, 0),
            ]
        };
        self.txq.add_desc_chains(&descs, slot * 2).unwrap();
        self.tx_given += 1;
        dev.process_queue(TXQ);
    }

    fn send_raw_chain(&mut self, dev: &mut Vsock, descs: &[RawDescriptor]) {
        let slot = self.tx_given % (QSIZE / 2);
        self.txq.add_desc_chains(descs, slot * 2).unwrap();
        self.tx_given += 1;
        dev.process_queue(TXQ);
    }
}

fn device(dir: &tempfile::TempDir) -> (Vsock, std::path::PathBuf) {
    let uds = dir.path().join("v.sock");
    (Vsock::new(GUEST_CID, &uds).unwrap(), uds)
}

fn activate(dev: &mut Vsock, mem: &GuestMemoryMmap, queues: Vec<Queue>) -> Arc<Interrupt> {
    let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    dev.activate(mem.clone(), VIRTIO_F_VERSION_1, queues, irq.clone())
        .unwrap();
    irq
}

/// Runs the backend until the guest has received something (bounded).
fn pump(dev: &mut Vsock, g: &mut Guest) -> Vec<(Hdr, Vec<u8>)> {
    for _ in 0..200 {
        dev.process_backend();
        let p = g.recv();
        if !p.is_empty() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Vec::new()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_initiated_connect_handshake_and_echo() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    g.give_rx(4, 4096);
    let irq = activate(&mut dev, &mem, queues);

    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();

    let p = pump(&mut dev, &mut g);
    assert_eq!(p.len(), 1);
    let (req, _) = &p[0];
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, 1234);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, CONN_BUF);
    assert_ne!(irq.status() & crate::virtio::INT_VRING, 0);
    let local = req.src_port;

    // The guest accepts: the host gets "OK <local port>".
    g.send(&mut dev, &Hdr::guest(1234, local, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));

    // host -> guest
    host.write_all(b"ping").unwrap();
    let p = pump(&mut dev, &mut g);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RW);
    assert_eq!(p[0].1, b"ping");

    // guest -> host
    let mut h = Hdr::guest(1234, local, OP_RW);
    h.len = 4;
    g.send(&mut dev, &h, b"pong");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // The host half-closes: the guest learns the host sends no more, and
    // can still answer.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    g.give_rx(2, 4096);
    let p = pump(&mut dev, &mut g);
    assert_eq!(p[0].0.op, OP_SHUTDOWN);
    assert_eq!(p[0].0.flags, SHUTDOWN_SEND);
    let mut h = Hdr::guest(1234, local, OP_RW);
    h.len = 3;
    g.send(&mut dev, &h, b"bye");
    let mut got = [0u8; 3];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"bye");
    // The guest closes: full shutdown is answered with a reset, and the
    // host sees EOF.
    let mut h = Hdr::guest(1234, local, OP_SHUTDOWN);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(&mut dev, &h, &[]);
    assert_eq!(g.recv()[0].0.op, OP_RST);
    assert_eq!(dev.muxer().connection_count(), 0);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn guest_initiated_connect_goes_to_port_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    g.give_rx(6, 4096);
    activate(&mut dev, &mem, queues);

    let mut port_path = uds.clone().into_os_string();
    port_path.push("_5000");
    let listener = UnixListener::bind(&port_path).unwrap();

    g.send(&mut dev, &Hdr::guest(777, 5000, OP_REQUEST), &[]);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, OP_RESPONSE);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (5000, 777));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let mut h = Hdr::guest(777, 5000, OP_RW);
    h.len = 5;
    g.send(&mut dev, &h, b"hello");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    s.write_all(b"world").unwrap();
    let p = pump(&mut dev, &mut g);
    assert_eq!((p[0].0.op, p[0].1.as_slice()), (OP_RW, &b"world"[..]));

    // Credit request is answered with our counters.
    g.send(&mut dev, &Hdr::guest(777, 5000, OP_CREDIT_REQUEST), &[]);
    let p = g.recv();
    assert_eq!(p[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(p[0].0.fwd_cnt, 5);

    // Guest shuts down both ways: we reset and close the host socket.
    let mut h = Hdr::guest(777, 5000, OP_SHUTDOWN);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(&mut dev, &h, &[]);
    assert_eq!(g.recv()[0].0.op, OP_RST);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);

    // No listener on the port: reset.
    g.send(&mut dev, &Hdr::guest(778, 6000, OP_REQUEST), &[]);
    assert_eq!(g.recv()[0].0.op, OP_RST);
}

#[test]
fn credit_limits_what_the_guest_receives() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    g.give_rx(6, 4096);
    activate(&mut dev, &mem, queues);
    let mut port_path = uds.into_os_string();
    port_path.push("_9");
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut h = Hdr::guest(100, 9, OP_REQUEST);
    h.buf_alloc = 10;
    g.send(&mut dev, &h, &[]);
    assert_eq!(g.recv()[0].0.op, OP_RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(&[7u8; 100]).unwrap();
    let p = pump(&mut dev, &mut g);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1.len(), 10);
    // No more credit: nothing else arrives.
    for _ in 0..5 {
        dev.process_backend();
    }
    assert!(g.recv().is_empty());
    // The guest consumed 10 bytes.
    let mut h = Hdr::guest(100, 9, OP_CREDIT_UPDATE);
    h.buf_alloc = 10;
    h.fwd_cnt = 10;
    g.send(&mut dev, &h, &[]);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1.len(), 10);
}

#[test]
fn malformed_packets_are_dropped_or_reset() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, _uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    g.give_rx(4, 4096);
    activate(&mut dev, &mem, queues);

    // Wrong source CID (spoofing): silently dropped.
    let mut h = Hdr::guest(1, 2, OP_REQUEST);
    h.src_cid = 99;
    g.send(&mut dev, &h, &[]);
    assert!(g.recv().is_empty());
    // Not a stream socket: reset.
    let mut h = Hdr::guest(1, 2, OP_REQUEST);
    h.type_ = 2;
    g.send(&mut dev, &h, &[]);
    assert_eq!(g.recv()[0].0.op, OP_RST);
    // Data on a connection that does not exist: reset.
    let mut h = Hdr::guest(1, 2, OP_RW);
    h.len = 3;
    g.send(&mut dev, &h, b"abc");
    assert_eq!(g.recv()[0].0.op, OP_RST);
    // Header descriptor too short, out of guest memory, zero length,
    // header claiming more data than the chain has: consumed, nothing sent.
    g.send_raw_chain(&mut dev, &[raw(TX_BUFS, 10, 0)]);
    g.send_raw_chain(&mut dev, &[raw(0x7fff_0000_0000, 44, 0)]);
    g.send_raw_chain(&mut dev, &[raw(TX_BUFS, 0, 0)]);
    let mut h = Hdr::guest(1, 2, OP_RW);
    h.len = 60000;
    mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUFS + 0x3000))
        .unwrap();
    g.send_raw_chain(&mut dev, &[raw(TX_BUFS + 0x3000, 44, 0)]);
    // A header that claims more than the maximum payload.
    h.len = u32::MAX;
    mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUFS + 0x3000))
        .unwrap();
    g.send_raw_chain(&mut dev, &[raw(TX_BUFS + 0x3000, 44, 0)]);
    assert!(g.recv().is_empty());
    assert_eq!(g.txq.used().idx().load(), g.tx_given);
    // Unknown op on an unknown connection: reset.
    g.send(&mut dev, &Hdr::guest(1, 2, 99), &[]);
    assert_eq!(g.recv()[0].0.op, OP_RST);
}

#[test]
fn bad_connect_line_closes_the_host_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    g.give_rx(2, 4096);
    activate(&mut dev, &mem, queues);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO there\n").unwrap();
    for _ in 0..20 {
        dev.process_backend();
    }
    assert_closed(&mut host);
    // An endless line without newline is cut off too.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(&[b'C'; 100]).unwrap();
    for _ in 0..20 {
        dev.process_backend();
    }
    assert_closed(&mut host);
    assert!(g.recv().is_empty());
}

/// The peer closed the socket: EOF, or a reset when it closed with our
/// bytes unread.
fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 8];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("socket still open: {other:?}"),
    }
}

#[test]
fn rx_buffers_that_are_not_writable_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mem = memory();
    let (mut dev, uds) = device(&dir);
    let (mut g, queues) = Guest::new(&mem);
    // A read-only RX buffer: consumed with length 0.
    g.rxq.add_desc_chains(&[raw(RX_BUFS, 44, 0)], 0).unwrap();
    g.rx_given = 1;
    activate(&mut dev, &mem, queues);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    for _ in 0..20 {
        dev.process_backend();
    }
    assert_eq!(g.rxq.used().idx().load(), 1);
    let e = g.rxq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(e.len(), 0);
    // A proper buffer then gets the request.
    g.rx_seen = 1;
    g.give_rx(1, 4096);
    dev.process_queue(RXQ);
    assert_eq!(g.recv()[0].0.op, OP_REQUEST);
}
