//! Stream flow control across two threads over a real unix socketpair.

mod common;

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use capsa_proto::*;
use common::Rng;

type Key = (String, StdStream);

/// One end of a connection: a demux thread routing `Window` frames to the
/// credit of our outbound streams and `Data`/`Eof` to our inbound buffers.
struct End {
    enc: SharedEncoder<UnixStream>,
    credits: Arc<Mutex<HashMap<Key, Arc<SendCredit>>>>,
    inbound: Arc<Mutex<HashMap<Key, InboundSender>>>,
    max_buffered: Arc<AtomicUsize>,
    demux: Option<thread::JoinHandle<Result<(), ProtoError>>>,
}

impl End {
    fn new(sock: UnixStream) -> End {
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let enc = SharedEncoder::new(Encoder::new(sock.try_clone().unwrap()));
        let credits: Arc<Mutex<HashMap<Key, Arc<SendCredit>>>> = Arc::default();
        let inbound: Arc<Mutex<HashMap<Key, InboundSender>>> = Arc::default();
        let max_buffered = Arc::new(AtomicUsize::new(0));
        let (c, i, m) = (credits.clone(), inbound.clone(), max_buffered.clone());
        let demux = thread::spawn(move || {
            let mut dec = Decoder::new(BufReader::new(sock));
            loop {
                match dec.recv() {
                    Ok(Frame::Window {
                        process,
                        stream,
                        credit,
                    }) => {
                        let credit_of = c.lock().unwrap().get(&(process, stream)).cloned();
                        credit_of
                            .expect("window for a known stream")
                            .grant(credit)?;
                    }
                    Ok(Frame::Data {
                        process,
                        stream,
                        data,
                    }) => {
                        let map = i.lock().unwrap();
                        let tx = map
                            .get(&(process, stream))
                            .expect("data for a known stream");
                        tx.push(&data)?;
                        m.fetch_max(tx.buffered(), Ordering::Relaxed);
                    }
                    Ok(Frame::Eof { process, stream }) => {
                        i.lock().unwrap()[&(process, stream)].finish();
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(ProtoError::Closed) => {
                        for tx in i.lock().unwrap().values() {
                            tx.fail("connection closed");
                        }
                        for credit in c.lock().unwrap().values() {
                            credit.close();
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        End {
            enc,
            credits,
            inbound,
            max_buffered,
            demux: Some(demux),
        }
    }

    fn outbound(
        &self,
        process: &str,
        stream: StdStream,
        window: u32,
    ) -> OutboundWriter<UnixStream> {
        let credit = Arc::new(SendCredit::new(window));
        self.credits
            .lock()
            .unwrap()
            .insert((process.into(), stream), credit.clone());
        OutboundWriter::new(self.enc.clone(), credit, process, stream)
    }

    fn inbound(&self, process: &str, stream: StdStream, window: u32) -> InboundReader {
        let enc = self.enc.clone();
        let p = process.to_owned();
        let (tx, rx) = inbound(window, move |credit| {
            enc.send(&Frame::Window {
                process: p.clone(),
                stream,
                credit,
            })
            .map_err(io::Error::other)
        });
        self.inbound
            .lock()
            .unwrap()
            .insert((process.into(), stream), tx);
        rx
    }

    fn shutdown(mut self) -> Result<(), ProtoError> {
        self.enc
            .with(|e| e.get_ref().shutdown(std::net::Shutdown::Both))
            .unwrap();
        self.demux.take().unwrap().join().unwrap()
    }
}

/// Writes `data` in random-sized pieces, counting bytes accepted.
fn produce(
    mut w: OutboundWriter<UnixStream>,
    data: Arc<Vec<u8>>,
    seed: u64,
    sent: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut off = 0;
        while off < data.len() {
            let n = (1 + rng.below(200_000)).min(data.len() - off);
            let mut piece = &data[off..off + n];
            while !piece.is_empty() {
                let k = w.write(piece).unwrap();
                assert!(k > 0 && k <= MAX_DATA);
                sent.fetch_add(k as u64, Ordering::SeqCst);
                piece = &piece[k..];
            }
            off += n;
        }
        w.close().unwrap();
    })
}

/// Reads to EOF in random-sized pieces, with pauses; returns what it read.
fn consume(mut r: InboundReader, seed: u64, pause_every: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 100_000];
    let mut reads = 0;
    loop {
        let want = 1 + rng.below(buf.len());
        let n = r.read(&mut buf[..want]).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        reads += 1;
        if pause_every > 0 && reads % pause_every == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn twenty_megabytes_through_a_small_window_both_ways_byte_exact() {
    const WINDOW: u32 = 16 * 1024;
    let (a, h) = UnixStream::pair().unwrap();
    let agent = End::new(a);
    let host = End::new(h);

    let out = Arc::new(Rng::new(1).bytes(20 << 20));
    let err = Arc::new(Rng::new(2).bytes(1 << 20));
    let inp = Arc::new(Rng::new(3).bytes(8 << 20));

    // Register receivers before anything can be sent, as the protocol asks.
    let host_out = host.inbound("c1", StdStream::Stdout, WINDOW);
    let host_err = host.inbound("c1", StdStream::Stderr, WINDOW);
    let agent_in = agent.inbound("c1", StdStream::Stdin, WINDOW);
    let sent = Arc::new(AtomicU64::new(0));
    let producers = [
        produce(
            agent.outbound("c1", StdStream::Stdout, WINDOW),
            out.clone(),
            10,
            sent.clone(),
        ),
        produce(
            agent.outbound("c1", StdStream::Stderr, WINDOW),
            err.clone(),
            11,
            sent.clone(),
        ),
        produce(
            host.outbound("c1", StdStream::Stdin, WINDOW),
            inp.clone(),
            12,
            sent.clone(),
        ),
    ];
    let consumers = [
        thread::spawn(move || consume(host_out, 20, 50)),
        thread::spawn(move || consume(host_err, 21, 5)),
        thread::spawn(move || consume(agent_in, 22, 20)),
    ];
    for p in producers {
        p.join().unwrap();
    }
    let got: Vec<Vec<u8>> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        got[0] == *out,
        "stdout differs ({} of {} bytes)",
        got[0].len(),
        out.len()
    );
    assert!(
        got[1] == *err,
        "stderr differs ({} of {} bytes)",
        got[1].len(),
        err.len()
    );
    assert!(
        got[2] == *inp,
        "stdin differs ({} of {} bytes)",
        got[2].len(),
        inp.len()
    );
    assert_eq!(sent.load(Ordering::SeqCst), (29 << 20) as u64);
    // Neither side ever held more than one window per stream.
    for end in [&agent, &host] {
        let max = end.max_buffered.load(Ordering::Relaxed);
        assert!(max <= WINDOW as usize, "buffered {max} > window {WINDOW}");
        assert!(max > 0);
    }
    agent.shutdown().unwrap();
    host.shutdown().unwrap();
}

#[test]
fn a_stalled_reader_stops_the_sender_at_the_window_and_loses_nothing() {
    const WINDOW: u32 = 8 * 1024;
    let (a, h) = UnixStream::pair().unwrap();
    let agent = End::new(a);
    let host = End::new(h);
    let data = Arc::new(Rng::new(5).bytes(2 << 20));
    let mut reader = host.inbound("e1", StdStream::Stdout, WINDOW);
    let sent = Arc::new(AtomicU64::new(0));
    let producer = produce(
        agent.outbound("e1", StdStream::Stdout, WINDOW),
        data.clone(),
        6,
        sent.clone(),
    );

    // Nobody reads: the sender gets exactly one window out, then waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::SeqCst) < u64::from(WINDOW) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(sent.load(Ordering::SeqCst), u64::from(WINDOW));
    assert_eq!(host.max_buffered.load(Ordering::Relaxed), WINDOW as usize);

    // Read a little: the sender moves by what was read (credit comes back in
    // quarter-window batches), no further.
    let mut first = vec![0u8; WINDOW as usize / 2];
    reader.read_exact(&mut first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::SeqCst) < u64::from(WINDOW) * 3 / 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(sent.load(Ordering::SeqCst), u64::from(WINDOW) * 3 / 2);

    // Then a slow reader drains the rest, byte-exact.
    let mut rest = consume(reader, 7, 3);
    producer.join().unwrap();
    first.append(&mut rest);
    assert!(
        first == *data,
        "got {} of {} bytes",
        first.len(),
        data.len()
    );
    assert!(host.max_buffered.load(Ordering::Relaxed) <= WINDOW as usize);
    agent.shutdown().unwrap();
    host.shutdown().unwrap();
}

#[test]
fn a_peer_that_ignores_its_credit_is_caught() {
    let (a, h) = UnixStream::pair().unwrap();
    let host = End::new(h);
    let _reader = host.inbound("c1", StdStream::Stdout, 1024);
    // A rogue agent sends 1025 bytes against a 1024-byte window.
    let mut enc = Encoder::new(a.try_clone().unwrap());
    enc.send_data("c1", StdStream::Stdout, &[1; 1000]).unwrap();
    enc.send_data("c1", StdStream::Stdout, &[2; 25]).unwrap();
    drop(enc);
    drop(a);
    match host.shutdown() {
        Err(
            e @ ProtoError::Flow(FlowError::WindowExceeded {
                got: 25,
                allowed: 24,
            }),
        ) => {
            assert_eq!(e.code(), ErrorCode::FlowControl);
            assert!(e.is_fatal());
            assert!(matches!(e.reply_frame(), Some(Frame::Error(_))));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dead_connection_fails_readers_and_wakes_writers() {
    let (a, h) = UnixStream::pair().unwrap();
    let agent = End::new(a);
    let host = End::new(h);
    let mut reader = host.inbound("c1", StdStream::Stdout, 4096);
    let mut writer = agent.outbound("c1", StdStream::Stdout, 4096);
    writer.write_all(&[9; 4096]).unwrap();
    // Out of credit: the next write waits until the connection dies.
    let t = thread::spawn(move || writer.write(&[1]).map(|_| ()));
    thread::sleep(Duration::from_millis(100));
    host.shutdown().unwrap();
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    agent.shutdown().unwrap();
    // The buffered bytes still come out, then an error, not a clean EOF.
    let mut buf = vec![0; 8192];
    let mut got = 0;
    let err = loop {
        match reader.read(&mut buf) {
            Ok(0) => panic!("clean EOF on a dead connection"),
            Ok(n) => got += n,
            Err(e) => break e,
        }
    };
    assert_eq!(got, 4096);
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
}
