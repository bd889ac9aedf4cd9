//! Stream flow control across two threads over a real unix socketpair.

mod common;

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use capsa_proto::*;
use common::Rng;

/// One end of a connection: a demux thread feeding [`Streams`], recording
/// the most bytes ever buffered for one inbound stream.
struct End {
    streams: Arc<Streams<UnixStream>>,
    max_buffered: Arc<AtomicUsize>,
    demux: Option<thread::JoinHandle<Result<(), ProtoError>>>,
}

impl End {
    fn new(sock: UnixStream, window: u32) -> End {
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let enc = SharedEncoder::new(Encoder::new(sock.try_clone().unwrap()));
        let streams = Arc::new(Streams::new(enc, window));
        let max_buffered = Arc::new(AtomicUsize::new(0));
        let (st, m) = (streams.clone(), max_buffered.clone());
        let demux = thread::spawn(move || {
            let mut dec = Decoder::new(BufReader::new(sock));
            loop {
                match dec.recv() {
                    Ok(frame) => {
                        let data_of = match &frame {
                            Frame::Data {
                                process, stream, ..
                            } => Some((process.clone(), *stream)),
                            _ => None,
                        };
                        let rest = st
                            .dispatch(frame)
                            .inspect_err(|e| st.fail_all(&e.to_string()))?;
                        assert!(rest.is_none(), "unexpected {rest:?}");
                        if let Some((p, s)) = data_of {
                            m.fetch_max(st.buffered(&p, s).unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                    Err(ProtoError::Closed) => {
                        st.fail_all("connection closed");
                        return Ok(());
                    }
                    Err(e) => {
                        st.fail_all(&e.to_string());
                        return Err(e);
                    }
                }
            }
        });
        End {
            streams,
            max_buffered,
            demux: Some(demux),
        }
    }

    fn outbound(&self, process: &str, stream: StdStream) -> OutboundWriter<UnixStream> {
        self.streams.open_outbound(process, stream)
    }

    fn inbound(&self, process: &str, stream: StdStream) -> InboundReader {
        self.streams.open_inbound(process, stream)
    }

    fn shutdown(mut self) -> Result<(), ProtoError> {
        self.streams
            .encoder()
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
    let agent = End::new(a, WINDOW);
    let host = End::new(h, WINDOW);

    let out = Arc::new(Rng::new(1).bytes(20 << 20));
    let err = Arc::new(Rng::new(2).bytes(1 << 20));
    let inp = Arc::new(Rng::new(3).bytes(8 << 20));

    // Register receivers before anything can be sent, as the protocol asks.
    let host_out = host.inbound("c1", StdStream::Stdout);
    let host_err = host.inbound("c1", StdStream::Stderr);
    let agent_in = agent.inbound("c1", StdStream::Stdin);
    let sent = Arc::new(AtomicU64::new(0));
    let producers = [
        produce(
            agent.outbound("c1", StdStream::Stdout),
            out.clone(),
            10,
            sent.clone(),
        ),
        produce(
            agent.outbound("c1", StdStream::Stderr),
            err.clone(),
            11,
            sent.clone(),
        ),
        produce(
            host.outbound("c1", StdStream::Stdin),
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
    let agent = End::new(a, WINDOW);
    let host = End::new(h, WINDOW);
    let data = Arc::new(Rng::new(5).bytes(2 << 20));
    let mut reader = host.inbound("e1", StdStream::Stdout);
    let sent = Arc::new(AtomicU64::new(0));
    let producer = produce(
        agent.outbound("e1", StdStream::Stdout),
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
    let host = End::new(h, 1024);
    let _reader = host.inbound("c1", StdStream::Stdout);
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
    let agent = End::new(a, 4096);
    let host = End::new(h, 4096);
    let mut reader = host.inbound("c1", StdStream::Stdout);
    let mut writer = agent.outbound("c1", StdStream::Stdout);
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

#[test]
fn streams_route_frames_and_forget_closed_processes() {
    let (a, h) = UnixStream::pair().unwrap();
    let streams = Streams::new(SharedEncoder::new(Encoder::new(a)), 64);
    let mut peer = Decoder::new(h);
    let mut rx = streams.open_inbound("c1", StdStream::Stdin);
    let tx = streams.open_outbound("c1", StdStream::Stdout);

    // Control frames come back to the caller.
    let hello = Frame::Hello(Hello::new("x"));
    assert_eq!(streams.dispatch(hello.clone()).unwrap(), Some(hello));
    // Data and Eof reach the reader; reading returns credit on the wire.
    let data = |d: &[u8]| Frame::Data {
        process: "c1".into(),
        stream: StdStream::Stdin,
        data: d.to_vec(),
    };
    assert_eq!(streams.dispatch(data(&[5; 40])).unwrap(), None);
    assert_eq!(streams.buffered("c1", StdStream::Stdin), Some(40));
    let mut buf = [0u8; 40];
    rx.read_exact(&mut buf).unwrap();
    assert_eq!(
        peer.recv().unwrap(),
        Frame::Window {
            process: "c1".into(),
            stream: StdStream::Stdin,
            credit: 40
        }
    );
    // Beyond the window: a fatal flow error.
    assert!(matches!(
        streams.dispatch(data(&[0; 65])),
        Err(ProtoError::Flow(_))
    ));
    // Window frames feed the writer's credit.
    assert_eq!(tx.credit().available(), 64);
    streams
        .dispatch(Frame::Window {
            process: "c1".into(),
            stream: StdStream::Stdout,
            credit: 10,
        })
        .unwrap();
    assert_eq!(tx.credit().available(), 74);
    // Frames for streams nobody opened are dropped.
    for f in [
        Frame::Data {
            process: "zz".into(),
            stream: StdStream::Stdin,
            data: vec![1],
        },
        Frame::Window {
            process: "zz".into(),
            stream: StdStream::Stdout,
            credit: 1,
        },
        Frame::close_stdin("zz"),
    ] {
        assert_eq!(streams.dispatch(f).unwrap(), None);
    }
    // Closing the process: the reader sees EOF, the writer a broken pipe,
    // later frames for it are dropped.
    streams.dispatch(data(b"last")).unwrap();
    streams.close_process("c1");
    let mut rest = Vec::new();
    rx.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"last");
    let mut tx = tx;
    assert_eq!(
        tx.write(b"x").unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
    assert_eq!(streams.dispatch(data(b"late")).unwrap(), None);
    assert_eq!(streams.buffered("c1", StdStream::Stdin), None);
}
