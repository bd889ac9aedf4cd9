//! Credit-based flow control for the standard streams.
//!
//! Every stream (a process's stdin, stdout or stderr) has a receive window.
//! The sender starts with [`INITIAL_WINDOW`] bytes of credit, spends credit
//! for every data byte it sends, and stops when it has none. The receiver
//! buffers at most a window of bytes; as its consumer takes bytes out of the
//! buffer it hands the credit back with [`Frame::Window`] frames. So:
//!
//! - a slow reader makes the *sender* wait (and, in the agent, stop reading
//!   the process's pipe, so the process blocks in `write`); nobody buffers
//!   more than a window per stream;
//! - no byte is dropped: data is only sent against credit, and a receiver
//!   always has room for what the credit allowed;
//! - a peer that sends beyond its credit broke the protocol:
//!   [`FlowError::WindowExceeded`].
//!
//! Because a receiver only buffers (never blocks) when data arrives, the
//! thread that reads frames off the connection never waits on a slow
//! consumer, and the other streams and the control messages keep flowing.
//!
//! The pieces: [`SendCredit`] (sender's credit, blocking acquire),
//! [`RecvWindow`] (receiver's accounting, decides when to send credit),
//! and built on them [`OutboundWriter`] (an `io::Write` that sends data
//! frames against credit), [`inbound`] (a bounded buffer whose reader end
//! is an `io::Read` that returns credit as it is read) and [`Streams`] (the
//! table of one connection's streams, routing incoming stream frames).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::codec::{Encoder, FlowError, ProtoError};
use crate::message::{Frame, StdStream};

/// Receive window of every stream at its start, bytes.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Most data bytes an [`OutboundWriter`] puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn into a second panic here; the state
    // guarded by these mutexes stays consistent between statements.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sender's side of a stream: credit it may spend. Thread-safe; share it
/// with `Arc` between the thread that sends data and the thread that reads
/// `Window` frames.
#[derive(Debug)]
pub struct SendCredit {
    state: Mutex<SendState>,
    cv: Condvar,
}

#[derive(Debug)]
struct SendState {
    available: u64,
    closed: bool,
}

impl SendCredit {
    /// Credit for a stream whose receiver announced `window` bytes (for
    /// every stream, [`INITIAL_WINDOW`]).
    pub fn new(window: u32) -> Self {
        SendCredit {
            state: Mutex::new(SendState {
                available: u64::from(window),
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Adds credit from a `Window` frame and wakes a waiting sender.
    pub fn grant(&self, credit: u32) -> Result<(), FlowError> {
        let max = u64::from(u32::MAX);
        let mut s = lock(&self.state);
        let new = s.available + u64::from(credit);
        if new > max {
            return Err(FlowError::CreditOverflow { credit, max });
        }
        s.available = new;
        self.cv.notify_all();
        Ok(())
    }

    /// Takes up to `max` bytes of credit, waiting while there is none.
    /// Returns `None` once [`close`](Self::close) was called, `Some(0)` only
    /// for `max == 0`.
    pub fn acquire(&self, max: usize) -> Option<usize> {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return None;
            }
            if s.available > 0 || max == 0 {
                let n = (max as u64).min(s.available);
                s.available -= n;
                return Some(n as usize);
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes up to `max` bytes of credit without waiting (0 when none).
    pub fn try_acquire(&self, max: usize) -> usize {
        let mut s = lock(&self.state);
        if s.closed {
            return 0;
        }
        let n = (max as u64).min(s.available);
        s.available -= n;
        n as usize
    }

    /// Credit left.
    pub fn available(&self) -> u64 {
        lock(&self.state).available
    }

    /// Ends the stream for the sender: waiting and later `acquire`s return
    /// `None` (e.g. the process exited or the connection died).
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }
}

/// The receiver's accounting for one stream (not thread-safe by itself; see
/// [`inbound`] for a shared buffer built on it).
///
/// Invariant: the peer may send `allowed` more bytes, and
/// `allowed + buffered + unacknowledged == window`; so the bytes the
/// receiver holds never exceed the window.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u32,
    allowed: u64,
    unacked: u64,
}

impl RecvWindow {
    /// A window of `window` bytes (> 0), all of it granted to the peer.
    pub fn new(window: u32) -> Self {
        let window = window.max(1);
        RecvWindow {
            window,
            allowed: u64::from(window),
            unacked: 0,
        }
    }

    /// The window size.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Bytes the peer may still send.
    pub fn allowed(&self) -> u64 {
        self.allowed
    }

    /// Accounts for `n` bytes that arrived. Fails, changing nothing, when the
    /// peer had less credit.
    pub fn on_data(&mut self, n: usize) -> Result<(), FlowError> {
        if n as u64 > self.allowed {
            return Err(FlowError::WindowExceeded {
                got: n,
                allowed: self.allowed,
            });
        }
        self.allowed -= n as u64;
        Ok(())
    }

    /// Accounts for `n` bytes the consumer took out of the buffer. Returns
    /// the credit to send in a `Window` frame, once a quarter of the window
    /// has been consumed (batching keeps `Window` frames few). Holding back
    /// less than a quarter never stalls the peer: with an empty buffer it
    /// still has three quarters of the window to send.
    pub fn on_consumed(&mut self, n: usize) -> Option<u32> {
        self.unacked += n as u64;
        let threshold = u64::from(self.window / 4).max(1);
        if self.unacked >= threshold {
            self.flush()
        } else {
            None
        }
    }

    /// Returns all credit held back, if any.
    pub fn flush(&mut self) -> Option<u32> {
        if self.unacked == 0 {
            return None;
        }
        // unacked <= window - allowed, so it fits in u32.
        let credit = self.unacked as u32;
        self.allowed += self.unacked;
        self.unacked = 0;
        Some(credit)
    }
}

/// An [`Encoder`] shared by the threads that send on one connection. Each
/// frame is written whole under the lock.
#[derive(Debug)]
pub struct SharedEncoder<W> {
    inner: Arc<Mutex<Encoder<W>>>,
}

impl<W> Clone for SharedEncoder<W> {
    fn clone(&self) -> Self {
        SharedEncoder {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<W: Write> SharedEncoder<W> {
    /// Shares `enc`.
    pub fn new(enc: Encoder<W>) -> Self {
        SharedEncoder {
            inner: Arc::new(Mutex::new(enc)),
        }
    }

    /// Sends one frame.
    pub fn send(&self, frame: &Frame) -> Result<(), ProtoError> {
        lock(&self.inner).send(frame)
    }

    /// Sends a data frame without building a [`Frame`].
    pub fn send_data(
        &self,
        process: &str,
        stream: StdStream,
        data: &[u8],
    ) -> Result<(), ProtoError> {
        lock(&self.inner).send_data(process, stream, data)
    }

    /// Runs `f` with the encoder locked.
    pub fn with<T>(&self, f: impl FnOnce(&mut Encoder<W>) -> T) -> T {
        f(&mut lock(&self.inner))
    }
}

fn to_io(e: ProtoError) -> io::Error {
    match e {
        ProtoError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// The sending end of a stream as an `io::Write`: each `write` waits for
/// credit, then sends as many bytes as the credit (and [`MAX_DATA`]) allow
/// in one `Data` frame. Use it with `io::copy(&mut pipe, &mut writer)`.
///
/// When the [`SendCredit`] is closed, writes fail with `BrokenPipe`.
#[derive(Debug)]
pub struct OutboundWriter<W> {
    enc: SharedEncoder<W>,
    credit: Arc<SendCredit>,
    process: String,
    stream: StdStream,
}

impl<W: Write> OutboundWriter<W> {
    /// A writer for `stream` of `process`, spending `credit` (feed the
    /// stream's `Window` frames into the same `SendCredit`).
    pub fn new(
        enc: SharedEncoder<W>,
        credit: Arc<SendCredit>,
        process: impl Into<String>,
        stream: StdStream,
    ) -> Self {
        OutboundWriter {
            enc,
            credit,
            process: process.into(),
            stream,
        }
    }

    /// The credit this writer spends.
    pub fn credit(&self) -> &Arc<SendCredit> {
        &self.credit
    }

    /// Ends the stream: sends its `Eof` frame.
    pub fn close(self) -> Result<(), ProtoError> {
        self.enc.send(&Frame::Eof {
            process: self.process,
            stream: self.stream,
        })
    }
}

impl<W: Write> Write for OutboundWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(MAX_DATA);
        let Some(n) = self.credit.acquire(want) else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{:?} of {} is closed", self.stream, self.process),
            ));
        };
        self.enc
            .send_data(&self.process, self.stream, &buf[..n])
            .map_err(to_io)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct InState {
    buf: VecDeque<u8>,
    window: RecvWindow,
    eof: bool,
    failed: Option<String>,
    reader_gone: bool,
}

struct InShared {
    state: Mutex<InState>,
    cv: Condvar,
}

/// Creates the receiving end of a stream: a bounded buffer of `window`
/// bytes. The thread that reads frames pushes `Data` into the
/// [`InboundSender`] (never blocks); the consumer reads the
/// [`InboundReader`], which calls `on_credit` with the credit to return
/// (send it as a `Window` frame for this stream).
pub fn inbound<F>(window: u32, on_credit: F) -> (InboundSender, InboundReader)
where
    F: FnMut(u32) -> io::Result<()> + Send + 'static,
{
    let shared = Arc::new(InShared {
        state: Mutex::new(InState {
            buf: VecDeque::new(),
            window: RecvWindow::new(window),
            eof: false,
            failed: None,
            reader_gone: false,
        }),
        cv: Condvar::new(),
    });
    (
        InboundSender {
            shared: Arc::clone(&shared),
        },
        InboundReader {
            shared,
            on_credit: Box::new(on_credit),
        },
    )
}

/// The frame-reading thread's handle on an inbound stream.
pub struct InboundSender {
    shared: Arc<InShared>,
}

impl std::fmt::Debug for InboundSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSender").finish_non_exhaustive()
    }
}

impl InboundSender {
    /// Buffers the bytes of a `Data` frame. Fails when they exceed the
    /// peer's credit (a protocol violation: answer with an error frame) or
    /// arrive after `Eof`. Never blocks. When the reader was dropped the
    /// bytes are discarded (still counted against the window, and no credit
    /// comes back: keep the reader and drain it into `io::sink()` to keep
    /// the peer flowing).
    pub fn push(&self, data: &[u8]) -> Result<(), ProtoError> {
        let mut s = lock(&self.shared.state);
        if s.eof {
            return Err(ProtoError::Malformed {
                kind: "data".into(),
                reason: "data after the stream's eof".into(),
                request_id: None,
            });
        }
        s.window.on_data(data.len())?;
        if !s.reader_gone {
            s.buf.extend(data);
            self.shared.cv.notify_all();
        }
        Ok(())
    }

    /// Marks the end of the stream (an `Eof` frame): the reader gets EOF
    /// after the buffered bytes.
    pub fn finish(&self) {
        lock(&self.shared.state).eof = true;
        self.shared.cv.notify_all();
    }

    /// The connection died: the reader gets an error (not EOF: bytes may be
    /// missing) after the buffered bytes.
    pub fn fail(&self, reason: impl Into<String>) {
        let mut s = lock(&self.shared.state);
        if s.failed.is_none() {
            s.failed = Some(reason.into());
        }
        self.shared.cv.notify_all();
    }

    /// Bytes buffered and not yet read.
    pub fn buffered(&self) -> usize {
        lock(&self.shared.state).buf.len()
    }
}

/// The consumer's end of an inbound stream, an `io::Read`. Each read returns
/// credit through the `on_credit` callback given to [`inbound`].
pub struct InboundReader {
    shared: Arc<InShared>,
    on_credit: Box<dyn FnMut(u32) -> io::Result<()> + Send>,
}

impl std::fmt::Debug for InboundReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundReader").finish_non_exhaustive()
    }
}

impl Read for InboundReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let (n, credit) = {
            let mut s = lock(&self.shared.state);
            while s.buf.is_empty() {
                // Eof first: after it nothing is missing, whatever happens
                // to the connection later.
                if s.eof {
                    return Ok(0);
                }
                if let Some(reason) = &s.failed {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        reason.clone(),
                    ));
                }
                s = self.shared.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            let (a, b) = s.buf.as_slices();
            let n = out.len().min(s.buf.len());
            let from_a = n.min(a.len());
            out[..from_a].copy_from_slice(&a[..from_a]);
            out[from_a..n].copy_from_slice(&b[..n - from_a]);
            s.buf.drain(..n);
            let credit = s.window.on_consumed(n);
            (n, credit)
        };
        // Outside the lock: sending may block on the connection. If it
        // fails, the bytes just read are still returned; the failure ends
        // the stream once the buffer is empty (no more credit can reach the
        // peer, so waiting for more data could hang).
        if let Some(c) = credit {
            if let Err(e) = (self.on_credit)(c) {
                let mut s = lock(&self.shared.state);
                if s.failed.is_none() {
                    s.failed = Some(format!("cannot return credit to the peer: {e}"));
                }
            }
        }
        Ok(n)
    }
}

impl Drop for InboundReader {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.state);
        s.reader_gone = true;
        s.buf = VecDeque::new();
    }
}

type StreamKey = (String, StdStream);

/// The streams of one connection, for the thread that reads its frames:
/// routes `Window` frames to the credit of this side's outbound streams and
/// `Data`/`Eof` frames to its inbound buffers. Both the host and the agent
/// use one per connection.
///
/// ```no_run
/// # use capsa_proto::*;
/// # fn demo(sock: std::os::unix::net::UnixStream) -> Result<(), ProtoError> {
/// let streams = Streams::new(
///     SharedEncoder::new(Encoder::new(sock.try_clone()?)),
///     INITIAL_WINDOW,
/// );
/// // Before sending (host) or handling (agent) an exec of "e1":
/// let stdout = streams.open_inbound("e1", StdStream::Stdout); // host side
/// let mut dec = Decoder::new(std::io::BufReader::new(sock));
/// loop {
///     let frame = match dec.recv() {
///         Ok(f) => f,
///         Err(e) if !e.is_fatal() => continue,
///         Err(e) => { streams.fail_all(&e.to_string()); return Err(e) }
///     };
///     if let Some(control) = streams.dispatch(frame)? {
///         // Hello, Request, Response or Error: the caller's business.
///         # let _ = control;
///     }
/// }
/// # }
/// ```
pub struct Streams<W> {
    enc: SharedEncoder<W>,
    window: u32,
    outbound: Mutex<HashMap<StreamKey, Arc<SendCredit>>>,
    inbound: Mutex<HashMap<StreamKey, InboundSender>>,
}

impl<W> std::fmt::Debug for Streams<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("window", &self.window)
            .field("outbound", &lock(&self.outbound).len())
            .field("inbound", &lock(&self.inbound).len())
            .finish()
    }
}

impl<W: Write + Send + 'static> Streams<W> {
    /// Streams sending on `enc`, every stream with a window of `window`
    /// bytes ([`INITIAL_WINDOW`] on both sides of a real connection).
    pub fn new(enc: SharedEncoder<W>, window: u32) -> Self {
        Streams {
            enc,
            window,
            outbound: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
        }
    }

    /// The connection's encoder.
    pub fn encoder(&self) -> &SharedEncoder<W> {
        &self.enc
    }

    /// Opens a stream this side sends (agent: stdout/stderr; host: stdin).
    /// Reopening a process's stream closes the old writer's credit.
    pub fn open_outbound(&self, process: &str, stream: StdStream) -> OutboundWriter<W> {
        let credit = Arc::new(SendCredit::new(self.window));
        if let Some(old) =
            lock(&self.outbound).insert((process.to_owned(), stream), Arc::clone(&credit))
        {
            old.close();
        }
        OutboundWriter::new(self.enc.clone(), credit, process, stream)
    }

    /// Opens a stream this side receives (host: stdout/stderr; agent:
    /// stdin). Its reader returns credit on this connection. Open it before
    /// the peer may send: the host before it sends the `create`/`exec`, the
    /// agent before it answers it.
    pub fn open_inbound(&self, process: &str, stream: StdStream) -> InboundReader {
        let enc = self.enc.clone();
        let name = process.to_owned();
        let (tx, rx) = inbound(self.window, move |credit| {
            enc.send(&Frame::Window {
                process: name.clone(),
                stream,
                credit,
            })
            .map_err(to_io)
        });
        if let Some(old) = lock(&self.inbound).insert((process.to_owned(), stream), tx) {
            old.finish();
        }
        rx
    }

    /// Handles a stream frame (`Data`, `Window`, `Eof`) and returns `None`;
    /// returns any other frame for the caller. Never blocks.
    ///
    /// Frames for streams that are not open (e.g. stdin sent while the
    /// process was exiting, after [`close_process`](Self::close_process))
    /// are dropped: there is nobody to deliver them to. Data beyond the
    /// window ([`ProtoError::Flow`], fatal) or after `Eof` (`Malformed`,
    /// not fatal) is an error.
    pub fn dispatch(&self, frame: Frame) -> Result<Option<Frame>, ProtoError> {
        match frame {
            Frame::Data {
                process,
                stream,
                data,
            } => {
                if let Some(tx) = lock(&self.inbound).get(&(process, stream)) {
                    tx.push(&data)?;
                }
                Ok(None)
            }
            Frame::Window {
                process,
                stream,
                credit,
            } => {
                let c = lock(&self.outbound).get(&(process, stream)).cloned();
                if let Some(c) = c {
                    c.grant(credit)?;
                }
                Ok(None)
            }
            Frame::Eof { process, stream } => {
                if let Some(tx) = lock(&self.inbound).get(&(process, stream)) {
                    tx.finish();
                }
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Forgets a process's streams: its writers' credit is closed (writes
    /// fail with `BrokenPipe`), its readers see EOF after what is buffered.
    pub fn close_process(&self, process: &str) {
        lock(&self.outbound).retain(|(p, _), c| {
            if p == process {
                c.close();
            }
            p != process
        });
        lock(&self.inbound).retain(|(p, _), tx| {
            if p == process {
                tx.finish();
            }
            p != process
        });
    }

    /// The connection died: every writer's credit is closed, every reader
    /// gets an error (not EOF) after what is buffered.
    pub fn fail_all(&self, reason: &str) {
        for c in lock(&self.outbound).drain() {
            c.1.close();
        }
        for tx in lock(&self.inbound).drain() {
            tx.1.fail(reason);
        }
    }

    /// Bytes buffered for an inbound stream, if it is open.
    pub fn buffered(&self, process: &str, stream: StdStream) -> Option<usize> {
        lock(&self.inbound)
            .get(&(process.to_owned(), stream))
            .map(InboundSender::buffered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn recv_window_enforces_the_window_and_batches_credit() {
        let mut w = RecvWindow::new(100);
        w.on_data(60).unwrap();
        w.on_data(40).unwrap();
        assert_eq!(
            w.on_data(1),
            Err(FlowError::WindowExceeded { got: 1, allowed: 0 })
        );
        assert_eq!(w.on_consumed(24), None, "below a quarter: held back");
        assert_eq!(w.allowed(), 0);
        assert_eq!(w.on_consumed(1), Some(25));
        assert_eq!(w.allowed(), 25);
        assert_eq!(w.on_consumed(10), None);
        assert_eq!(w.flush(), Some(10));
        assert_eq!(w.flush(), None);
        assert_eq!(w.allowed(), 35);
        // A failed on_data changes nothing.
        assert!(w.on_data(36).is_err());
        w.on_data(35).unwrap();
        // A zero window is raised to one byte rather than stalling forever.
        let mut w = RecvWindow::new(0);
        w.on_data(1).unwrap();
        assert_eq!(w.on_consumed(1), Some(1));
    }

    #[test]
    fn send_credit_blocks_until_granted_and_wakes_on_close() {
        let c = Arc::new(SendCredit::new(10));
        assert_eq!(c.acquire(4), Some(4));
        assert_eq!(c.try_acquire(100), 6);
        assert_eq!(c.try_acquire(1), 0);
        assert_eq!(c.acquire(0), Some(0));
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.acquire(100));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "acquire returned without credit");
        c.grant(7).unwrap();
        assert_eq!(t.join().unwrap(), Some(7));
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.acquire(1));
        std::thread::sleep(Duration::from_millis(50));
        c.close();
        assert_eq!(t.join().unwrap(), None);
        assert!(c.is_closed());
        assert_eq!(c.try_acquire(1), 0);
    }

    #[test]
    fn send_credit_refuses_overflow() {
        let c = SendCredit::new(u32::MAX - 1);
        c.grant(1).unwrap();
        assert!(matches!(
            c.grant(1),
            Err(FlowError::CreditOverflow { credit: 1, .. })
        ));
        assert_eq!(c.available(), u64::from(u32::MAX));
    }

    #[test]
    fn inbound_buffer_delivers_in_order_then_eof_and_returns_credit() {
        let credits = Arc::new(Mutex::new(Vec::new()));
        let c = credits.clone();
        let (tx, mut rx) = inbound(8, move |n| {
            c.lock().unwrap().push(n);
            Ok(())
        });
        tx.push(b"abcde").unwrap();
        tx.push(b"fgh").unwrap();
        assert!(tx.push(b"i").is_err(), "ninth byte in an 8-byte window");
        let mut buf = [0u8; 3];
        assert_eq!(rx.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf, b"abc");
        assert_eq!(*credits.lock().unwrap(), vec![3]);
        tx.push(b"ijk").unwrap();
        tx.finish();
        let mut rest = Vec::new();
        rx.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"defghijk");
        assert!(tx.push(b"x").is_err(), "data after eof");
        // Eof wins over a later connection failure: nothing is missing.
        tx.fail("gone");
        assert_eq!(rx.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn inbound_credit_failure_keeps_the_bytes_and_then_ends_the_stream() {
        let (tx, mut rx) = inbound(4, |_| Err(io::Error::other("socket gone")));
        tx.push(b"wxyz").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(rx.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"wxyz");
        let e = rx.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("socket gone"), "{e}");
    }

    /// Sender and receiver accounting driven in random steps: the receiver
    /// never holds more than the window, the sender never exceeds its
    /// credit, nothing stalls while bytes remain, and all bytes arrive.
    #[test]
    fn random_schedules_keep_the_invariants() {
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let window = 1 + next(5000) as u32;
            let total = next(200_000);
            let credit = SendCredit::new(window);
            let mut recv = RecvWindow::new(window);
            let (mut sent, mut buffered, mut consumed) = (0u64, 0u64, 0u64);
            let mut in_flight: VecDeque<u64> = VecDeque::new();
            let mut credits: VecDeque<u32> = VecDeque::new();
            let mut idle = 0;
            while consumed < total {
                let before = (sent, consumed);
                match next(4) {
                    0 if sent < total => {
                        let want = 1 + next(total - sent) as usize;
                        let n = credit.try_acquire(want) as u64;
                        if n > 0 {
                            sent += n;
                            in_flight.push_back(n);
                        }
                    }
                    1 => {
                        if let Some(n) = in_flight.pop_front() {
                            recv.on_data(n as usize).expect("sender kept to its credit");
                            buffered += n;
                            assert!(buffered <= u64::from(window));
                        }
                    }
                    2 if buffered > 0 => {
                        let n = 1 + next(buffered);
                        buffered -= n;
                        consumed += n;
                        credits.extend(recv.on_consumed(n as usize));
                    }
                    _ => {
                        if let Some(c) = credits.pop_front() {
                            credit.grant(c).unwrap();
                        }
                    }
                }
                idle = if (sent, consumed) == before {
                    idle + 1
                } else {
                    0
                };
                assert!(
                    idle < 1000,
                    "stalled: sent {sent} consumed {consumed} of {total}"
                );
            }
            assert_eq!((sent, consumed), (total, total));
        }
    }
}
