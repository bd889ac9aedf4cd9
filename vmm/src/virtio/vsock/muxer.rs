//! Host side of the vsock device: maps guest vsock streams onto unix
//! sockets with the hybrid-vsock convention (as in Firecracker):
//!
//! - host -> guest: a host process connects to the unix socket at `uds`,
//!   writes `CONNECT <port>\n`; the muxer opens a guest connection to
//!   `<port>` and, once the guest accepts, answers `OK <local port>\n`.
//! - guest -> host: a guest connection to host port P is connected to the
//!   unix socket `<uds>_P`.
//!
//! Flow control follows the virtio-vsock credit scheme: we never send the
//! guest more than it has buffer space for, and we advertise a fixed buffer
//! (`CONN_BUF`) which bounds what we keep queued for a slow host reader; a
//! guest that overruns it gets its connection reset. All queues here are
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer we advertise per connection (guest -> host bytes we may
/// hold before the host reader takes them).
pub const CONN_BUF: u32 = 256 * 1024;
/// Largest payload in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
const MAX_CONNS: usize = 1024;
const MAX_UNACCEPTED: usize = 64;
const MAX_CTRL: usize = 4096;
const MAX_CONNECT_LINE: usize = 32;
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Host-side port.
    pub local: u32,
    /// Guest-side port.
    pub peer: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host connected and asked for a guest port; waiting for the guest.
    LocalInit,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Guest bytes not yet written to the host socket.
    pending: VecDeque<u8>,
    /// Guest bytes delivered to the host socket (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest (wrapping).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket may have data (edge-triggered epoll).
    readable: bool,
    /// We told the guest the host side will send no more.
    local_eof: bool,
    /// Close once `pending` drains (the guest shut down both directions).
    close_after_flush: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            pending: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            local_eof: false,
            close_after_flush: false,
        }
    }

    /// How many more bytes the guest can take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_rx(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.local_eof
            && !self.close_after_flush
            && self.peer_credit() > 0
    }

    /// Writes queued guest data to the host socket. Err means the socket is
    /// gone.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CONN_BUF / 4
    }
}

#[derive(Debug, Clone, Copy)]
struct Ctrl {
    key: Key,
    op: u16,
    flags: u32,
}

struct Unaccepted {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    unaccepted: HashMap<RawFd, Unaccepted>,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    ctrl: VecDeque<Ctrl>,
    next_local_port: u32,
    bounce: Vec<u8>,
    /// Round-robin start for host -> guest data.
    rr: usize,
}

fn epoll_add(epoll: &Epoll, fd: RawFd, events: EventSet, token: u64) -> std::io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
}

impl Muxer {
    /// Binds the host unix socket at `uds` (which must not exist).
    pub fn new(guest_cid: u64, uds: &Path) -> std::io::Result<Muxer> {
        let listener = UnixListener::bind(uds).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding vsock socket {}: {e}", uds.display()),
            )
        })?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll_add(&epoll, listener.as_raw_fd(), EventSet::IN, LISTENER_TOKEN)?;
        Ok(Muxer {
            guest_cid,
            uds: uds.to_owned(),
            epoll,
            listener,
            unaccepted: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            ctrl: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            bounce: vec![0u8; MAX_PKT_DATA as usize],
            rr: 0,
        })
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        self.ctrl.clear();
    }

    fn push_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        if self.ctrl.len() >= MAX_CTRL {
            tracing::warn!("vsock: control queue full, dropping op {op}");
            return;
        }
        self.ctrl.push_back(Ctrl { key, op, flags });
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Resets a connection that broke a rule or whose host side failed,
    /// saying why in capsa-vmm's log (which capsa shows when a VM's agent
    /// connection goes away).
    fn abort_conn(&mut self, key: Key, why: std::fmt::Arguments<'_>) {
        tracing::warn!(
            "vsock: resetting the connection of guest port {} to host port {}: {why}",
            key.peer,
            key.local
        );
        self.reset_conn(key);
    }

    /// Resets a connection: tells the guest and closes the host socket.
    fn reset_conn(&mut self, key: Key) {
        self.remove(key);
        self.push_ctrl(key, OP_RST, 0);
    }

    fn add_conn(&mut self, key: Key, conn: Conn) -> std::io::Result<()> {
        let fd = conn.stream.as_raw_fd();
        epoll_add(
            &self.epoll,
            fd,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
            fd as u64,
        )?;
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        Ok(())
    }

    /// Whether there is something to put on the guest's RX queue.
    pub fn has_pending_rx(&self) -> bool {
        !self.ctrl.is_empty() || self.conns.values().any(Conn::wants_rx)
    }

    /// Handles one packet the guest sent (TX queue).
    pub fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        if pkt.src_cid() != self.guest_cid || pkt.dst_cid() != HOST_CID {
            tracing::debug!(
                src = pkt.src_cid(),
                dst = pkt.dst_cid(),
                "vsock: dropping packet with wrong addresses"
            );
            return;
        }
        let key = Key {
            local: pkt.dst_port(),
            peer: pkt.src_port(),
        };
        if pkt.type_() != TYPE_STREAM {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = pkt.buf_alloc();
            c.peer_fwd_cnt = pkt.fwd_cnt();
        }
        match pkt.op() {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.abort_conn(key, format_args!("a second connection request"));
                } else {
                    self.connect_to_host(key, pkt.buf_alloc(), pkt.fwd_cnt());
                }
            }
            OP_RESPONSE => {
                let ok = match self.conns.get_mut(&key) {
                    Some(c) if c.state == State::LocalInit => {
                        c.state = State::Established;
                        let line = format!("OK {}\n", key.local);
                        c.stream.write_all(line.as_bytes()).is_ok()
                    }
                    _ => false,
                };
                if !ok {
                    self.abort_conn(key, format_args!("an unexpected response"));
                }
            }
            OP_RW => self.guest_data(key, pkt),
            OP_SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.push_ctrl(key, OP_RST, 0);
                    return;
                };
                let flags = pkt.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if flags == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    c.close_after_flush = true;
                    if c.pending.is_empty() {
                        self.reset_conn(key);
                    }
                } else if flags & SHUTDOWN_SEND != 0 && c.pending.is_empty() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            OP_RST => self.remove(key),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
                } else {
                    self.push_ctrl(key, OP_RST, 0);
                }
            }
            op => self.abort_conn(key, format_args!("unknown operation {op}")),
        }
    }

    fn guest_data<B: BitmapSlice>(&mut self, key: Key, pkt: &VsockPacket<'_, B>) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.push_ctrl(key, OP_RST, 0);
            return;
        };
        if c.state != State::Established {
            self.abort_conn(
                key,
                format_args!("data before the connection was established"),
            );
            return;
        }
        let len = pkt.len() as usize;
        if len == 0 {
            return;
        }
        let Some(data) = pkt.data_slice() else {
            self.abort_conn(key, format_args!("data split across descriptors"));
            return;
        };
        if c.pending.len() + len > CONN_BUF as usize {
            let queued = c.pending.len();
            self.abort_conn(
                key,
                format_args!("the guest overran its credit ({len} bytes on {queued} queued)"),
            );
            return;
        }
        let buf = &mut self.bounce[..len];
        if data.read_slice(buf, 0).is_err() {
            self.abort_conn(key, format_args!("unreadable guest data"));
            return;
        }
        c.pending.extend(buf.iter());
        if let Err(e) = c.flush() {
            self.abort_conn(key, format_args!("writing to the host socket: {e}"));
            return;
        }
        if c.needs_credit_update() {
            self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
        }
    }

    fn connect_to_host(&mut self, key: Key, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.len() >= MAX_CONNS {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", key.local));
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {path:?}: {e}");
                self.push_ctrl(key, OP_RST, 0);
                return;
            }
        };
        let mut conn = Conn::new(stream, State::Established);
        conn.peer_buf_alloc = buf_alloc;
        conn.peer_fwd_cnt = fwd_cnt;
        if conn.stream.set_nonblocking(true).is_err() || self.add_conn(key, conn).is_err() {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        self.push_ctrl(key, OP_RESPONSE, 0);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local == p) {
                return Some(p);
            }
        }
        None
    }

    /// Handles host socket readiness. Bounded work per call.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == LISTENER_TOKEN {
                    self.accept();
                    continue;
                }
                let fd = token as RawFd;
                if self.unaccepted.contains_key(&fd) {
                    self.read_connect_line(fd);
                    continue;
                }
                let Some(&key) = self.by_fd.get(&fd) else {
                    continue;
                };
                let set = ev.event_set();
                let Some(c) = self.conns.get_mut(&key) else {
                    continue;
                };
                if set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    c.readable = true;
                }
                if set.contains(EventSet::OUT) {
                    let had = c.pending.len();
                    if let Err(e) = c.flush() {
                        self.abort_conn(key, format_args!("writing to the host socket: {e}"));
                        continue;
                    }
                    if c.close_after_flush && c.pending.is_empty() {
                        self.reset_conn(key);
                        continue;
                    }
                    if had > 0 && c.needs_credit_update() {
                        self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
                    }
                }
            }
            if n < events.len() {
                break;
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..MAX_UNACCEPTED {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.unaccepted.len() >= MAX_UNACCEPTED
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if epoll_add(&self.epoll, fd, EventSet::IN, fd as u64).is_ok() {
                        self.unaccepted.insert(
                            fd,
                            Unaccepted {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("vsock accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads `CONNECT <port>\n` one byte at a time, so that nothing the
    /// client sends after the line is consumed here.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(u) = self.unaccepted.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8];
        let done = loop {
            match u.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(true),
                Ok(_) if u.line.len() >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => u.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        match done {
            Ok(false) => {}
            Ok(true) => {
                let u = self.unaccepted.remove(&fd).expect("present above");
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                self.start_host_conn(u);
            }
            Err(()) => {
                self.unaccepted.remove(&fd);
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    fn start_host_conn(&mut self, u: Unaccepted) {
        let port = parse_connect(&u.line);
        let (Some(peer), true) = (port, self.conns.len() < MAX_CONNS) else {
            // Bad request: closing the socket is the answer.
            return;
        };
        let Some(local) = self.alloc_local_port() else {
            return;
        };
        let key = Key { local, peer };
        if self
            .add_conn(key, Conn::new(u.stream, State::LocalInit))
            .is_ok()
        {
            self.push_ctrl(key, OP_REQUEST, 0);
        }
    }

    fn fill_header<B: BitmapSlice>(&self, pkt: &mut VsockPacket<'_, B>, key: Key, op: u16) {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.guest_cid)
            .set_src_port(key.local)
            .set_dst_port(key.peer)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(0)
            .set_len(0)
            .set_buf_alloc(CONN_BUF)
            .set_fwd_cnt(fwd);
    }

    /// Fills one RX packet for the guest. Returns false if there was
    /// nothing to send (the buffer is then untouched).
    pub fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> bool {
        if let Some(c) = self.ctrl.pop_front() {
            self.fill_header(pkt, c.key, c.op);
            pkt.set_flags(c.flags);
            if let Some(conn) = self.conns.get_mut(&c.key) {
                conn.fwd_cnt_sent = conn.fwd_cnt;
            }
            return true;
        }
        let room = pkt.data_slice().map_or(0, |d| d.len());
        if room == 0 {
            return false;
        }
        let mut keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_rx())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return false;
        }
        keys.sort_by_key(|k| (k.local, k.peer));
        let start = self.rr % keys.len();
        self.rr = self.rr.wrapping_add(1);
        keys.rotate_left(start);
        for key in keys {
            let c = self.conns.get_mut(&key).expect("listed above");
            let want = (c.peer_credit() as usize).min(room).min(self.bounce.len());
            match c.stream.read(&mut self.bounce[..want]) {
                Ok(0) => {
                    // The host closed its write side; it may still read
                    // (half-close), so only "we will send no more".
                    c.local_eof = true;
                    self.fill_header(pkt, key, OP_SHUTDOWN);
                    pkt.set_flags(SHUTDOWN_SEND);
                    return true;
                }
                Ok(n) => {
                    let data = pkt.data_slice().expect("room > 0");
                    if data.write_slice(&self.bounce[..n], 0).is_err() {
                        self.abort_conn(key, format_args!("unwritable guest buffer"));
                        continue;
                    }
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                    c.fwd_cnt_sent = c.fwd_cnt;
                    self.fill_header(pkt, key, OP_RW);
                    pkt.set_len(n as u32);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(key);
                    self.fill_header(pkt, key, OP_RST);
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

/// Parses the body of `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"\xff\xfe"), None);
    }

    #[test]
    fn credit_arithmetic_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, State::Established);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = 5u32.wrapping_sub(10); // wrapped
        c.peer_fwd_cnt = 5u32.wrapping_sub(400);
        assert_eq!(c.peer_credit(), 610);
        // A guest that shrinks its buffer below what is in flight: no credit.
        c.peer_buf_alloc = 100;
        assert_eq!(c.peer_credit(), 0);
    }
}
