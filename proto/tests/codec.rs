//! Framing, messages and handshake.

mod common;

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use capsa_proto::*;
use common::*;

#[test]
fn every_frame_round_trips_through_slices_and_streams() {
    let frames = all_frames();
    let mut wire = Vec::new();
    for f in &frames {
        let one = encode(f);
        assert_eq!(
            frame_len(&one).unwrap(),
            Some(one.len()),
            "{}",
            f.kind_name()
        );
        assert_eq!(&decode_frame(&one).unwrap(), f, "{}", f.kind_name());
        wire.extend_from_slice(&one);
    }
    // Back to back through an Encoder/Decoder pair.
    let mut enc = Encoder::new(Vec::new());
    for f in &frames {
        enc.send(f).unwrap();
    }
    assert_eq!(enc.get_ref(), &wire);
    let mut dec = Decoder::new(&wire[..]);
    for f in &frames {
        assert_eq!(&dec.recv().unwrap(), f);
    }
    assert!(matches!(dec.recv(), Err(ProtoError::Closed)));
}

#[test]
fn send_data_matches_data_frame() {
    let mut a = Encoder::new(Vec::new());
    a.send_data("c1", StdStream::Stderr, b"oops\n").unwrap();
    let b = encode(&Frame::Data {
        process: "c1".into(),
        stream: StdStream::Stderr,
        data: b"oops\n".to_vec(),
    });
    assert_eq!(a.into_inner(), b);
}

#[test]
fn wire_layout_is_as_documented() {
    let bytes = encode(&Frame::Window {
        process: "ab".into(),
        stream: StdStream::Stdout,
        credit: 0x0102_0304,
    });
    assert_eq!(bytes, [0, 0, 0, 9, 0x11, 1, 2, b'a', b'b', 1, 2, 3, 4]);
    let bytes = encode(&Frame::Request {
        id: 7,
        request: Request::Wait { id: "c".into() },
    });
    assert_eq!(&bytes[..5], &[0, 0, 0, (bytes.len() - 4) as u8, 0x02]);
    assert_eq!(&bytes[5..], br#"{"id":7,"request":{"id":"c","op":"wait"}}"#);
}

#[test]
fn encoding_is_deterministic() {
    // Two specs with equal content built separately: their HashMaps iterate in
    // different orders, the bytes must not differ.
    let a = encode(&Frame::Request {
        id: 1,
        request: all_requests().remove(0),
    });
    for _ in 0..10 {
        let b = encode(&Frame::Request {
            id: 1,
            request: all_requests().remove(0),
        });
        assert!(a == b, "two encodings of one create request differ");
    }
}

#[test]
fn oversized_frames_are_refused_before_allocating() {
    // The declared length is checked from the header alone: the decoder must
    // not read (or wait for) anything after it.
    for len in [MAX_FRAME as u32 + 1, u32::MAX] {
        let mut input = len.to_be_bytes().to_vec();
        input.extend_from_slice(&[0x10; 64]);
        let mut r = &input[..];
        let mut dec = Decoder::new(&mut r);
        match dec.recv() {
            Err(e @ ProtoError::FrameTooLarge { .. }) => {
                assert!(e.is_fatal());
                assert_eq!(e.code(), ErrorCode::FrameTooLarge);
                assert!(matches!(e.reply_frame(), Some(Frame::Error(_))));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.len(), 64, "read past the length field");
        assert!(matches!(
            frame_len(&input),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }
    // The largest legal frame passes (all_frames has one); one byte more is
    // refused by the encoder, which writes nothing.
    let mut enc = Encoder::new(Vec::new());
    let err = enc
        .send(&Frame::Data {
            process: "big".into(),
            stream: StdStream::Stdout,
            data: vec![7; MAX_FRAME - 5],
        })
        .unwrap_err();
    assert!(matches!(err, ProtoError::Encode { .. }), "{err}");
    assert!(!err.is_fatal());
    let err = enc
        .send_data("big", StdStream::Stdout, &vec![7; MAX_FRAME - 5])
        .unwrap_err();
    assert!(matches!(err, ProtoError::Encode { .. }), "{err}");
    assert!(enc.get_ref().is_empty());
}

#[test]
fn frames_the_decoder_would_refuse_are_not_encoded() {
    let mut out = vec![1, 2, 3];
    for f in [
        Frame::Data {
            process: "c".into(),
            stream: StdStream::Stdout,
            data: vec![],
        },
        Frame::Window {
            process: "c".into(),
            stream: StdStream::Stdout,
            credit: 0,
        },
    ] {
        let err = encode_frame(&f, &mut out).unwrap_err();
        assert!(matches!(err, ProtoError::Encode { .. }), "{err}");
        assert_eq!(out, [1, 2, 3], "output left as it was");
    }
    let mut enc = Encoder::new(Vec::new());
    assert!(enc.send_data("c", StdStream::Stdin, b"").is_err());
    assert!(enc.get_ref().is_empty());
}

#[test]
fn bad_ids_are_refused_on_both_sides() {
    for process in [String::new(), "x".repeat(MAX_ID_LEN + 1)] {
        let err = encode_frame(
            &Frame::Eof {
                process: process.clone(),
                stream: StdStream::Stdin,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, ProtoError::Encode { .. }));
        // A create with such an id encodes (JSON has no limit) but is refused
        // by the decoder with a reply to that request.
        let bytes = encode(&Frame::Request {
            id: 42,
            request: Request::Exec {
                container_id: "c".into(),
                exec_id: process,
                process: ExecProcess::default(),
                stdio: StdioOptions::default(),
            },
        });
        let err = decode_frame(&bytes).unwrap_err();
        match err.reply_frame() {
            Some(Frame::Response {
                id: 42,
                response: Response::Error(r),
            }) => {
                assert_eq!(r.code, ErrorCode::Malformed);
                assert!(r.message.contains("exec_id"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn truncated_frames_are_typed_errors_at_every_cut() {
    for f in all_frames()
        .iter()
        .filter(|f| !matches!(f, Frame::Data { data, .. } if data.len() > 1000))
    {
        let bytes = encode(f);
        for cut in 0..bytes.len() {
            let mut dec = Decoder::new(&bytes[..cut]);
            match (cut, dec.recv()) {
                (0, Err(ProtoError::Closed)) => {}
                (1..=3, Err(ProtoError::Truncated { expected: 4, got })) => assert_eq!(got, cut),
                (_, Err(ProtoError::Truncated { expected, got })) => {
                    assert_eq!((expected, got), (bytes.len(), cut));
                }
                (_, other) => panic!("{} cut at {cut}: {other:?}", f.kind_name()),
            }
            assert!(matches!(
                decode_frame(&bytes[..cut]),
                Err(ProtoError::Truncated { .. })
            ));
            if cut >= 4 {
                assert_eq!(frame_len(&bytes[..cut]).unwrap(), Some(bytes.len()));
            }
        }
    }
}

#[test]
fn malformed_frames_are_answered_and_the_stream_stays_in_step() {
    let good = encode(&Frame::Request {
        id: 9,
        request: Request::Shutdown,
    });
    let frame = |kind: u8, body: &[u8]| {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(body);
        v
    };
    let cases: Vec<(Vec<u8>, Option<u64>)> = vec![
        (0u32.to_be_bytes().to_vec(), None), // length 0: no kind byte
        (frame(0x7f, b"future"), None),      // unknown kind
        (frame(0x01, b"{not json"), None),   // hello
        (frame(0x01, br#"{"protocol_version":"1"}"#), None),
        (
            frame(0x02, br#"{"id":5,"request":{"op":"explode"}}"#),
            Some(5),
        ),
        (
            frame(0x02, br#"{"id":6,"request":{"op":"signal","id":"c"}}"#),
            Some(6),
        ),
        (frame(0x02, br#"{"request":{"op":"shutdown"}}"#), None),
        (
            frame(
                0x02,
                br#"{"id":7,"request":{"op":"delete","container_id":""}}"#,
            ),
            Some(7),
        ),
        (frame(0x02, b"[]"), None),
        (
            frame(0x03, br#"{"id":1,"response":{"result":"maybe"}}"#),
            None,
        ),
        (frame(0x04, br#"{"code":"not_found"}"#), None),
        (frame(0x10, &[]), None),                          // data: no header
        (frame(0x10, &[3, 1, b'c', b'x']), None),          // unknown stream
        (frame(0x10, &[1, 0, b'x']), None),                // empty id
        (frame(0x10, &[1, 9, b'c']), None),                // id past the end
        (frame(0x10, &[1, 1, b'c']), None),                // no data bytes
        (frame(0x10, &[1, 2, 0xff, 0xfe, b'x']), None),    // id not UTF-8
        (frame(0x11, &[1, 1, b'c', 0, 0, 1]), None),       // short credit
        (frame(0x11, &[1, 1, b'c', 0, 0, 0, 0]), None),    // zero credit
        (frame(0x11, &[1, 1, b'c', 0, 0, 0, 1, 0]), None), // long credit
        (frame(0x12, &[0, 1, b'c', b'!']), None),          // eof with trailing bytes
    ];
    for (bad, request_id) in cases {
        let mut input = bad.clone();
        input.extend_from_slice(&good);
        let mut dec = Decoder::new(&input[..]);
        let err = dec.recv().unwrap_err();
        assert!(!err.is_fatal(), "{err}");
        assert_eq!(err.code(), ErrorCode::Malformed, "{err}");
        match (request_id, err.reply_frame()) {
            (
                Some(want),
                Some(Frame::Response {
                    id,
                    response: Response::Error(r),
                }),
            ) => {
                assert_eq!(id, want);
                assert_eq!(r.code, ErrorCode::Malformed);
            }
            (None, Some(Frame::Error(r))) => assert_eq!(r.code, ErrorCode::Malformed),
            (_, other) => panic!("{bad:?}: {other:?}"),
        }
        // The next frame decodes: the bad one was consumed whole.
        assert_eq!(
            dec.recv().unwrap(),
            Frame::Request {
                id: 9,
                request: Request::Shutdown
            },
            "after {bad:?}"
        );
        assert!(matches!(
            decode_frame(&bad),
            Err(ProtoError::Malformed { .. })
        ));
    }
    // Trailing bytes after a whole frame, for decode_frame.
    let mut two = good.clone();
    two.push(0);
    assert!(matches!(
        decode_frame(&two),
        Err(ProtoError::Malformed { .. })
    ));
}

#[test]
fn unknown_error_codes_from_a_newer_peer_decode() {
    let body = br#"{"code":"quantum_fluctuation","message":"m"}"#;
    let mut bytes = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    bytes.push(0x04);
    bytes.extend_from_slice(body);
    assert_eq!(
        decode_frame(&bytes).unwrap(),
        Frame::Error(ErrorReply::new(ErrorCode::Unknown, "m"))
    );
}

/// A reader that hands out its bytes in pieces of random size and then
/// reports an error when read past its end, so a decoder that reads beyond
/// a declared length is caught.
struct Stingy<'a> {
    data: &'a [u8],
    rng: Rng,
    fence: bool,
}

impl Read for Stingy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            if self.fence {
                return Err(io::Error::other("read past the fence"));
            }
            return Ok(0);
        }
        let n = buf.len().min(self.data.len()).min(1 + self.rng.below(16));
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn decoder_never_reads_beyond_a_frame() {
    let mut rng = Rng::new(7);
    for f in all_frames() {
        let bytes = encode(&f);
        let mut dec = Decoder::new(Stingy {
            data: &bytes,
            rng: Rng::new(rng.next_u64()),
            fence: true,
        });
        assert_eq!(dec.recv().unwrap(), f);
    }
}

#[test]
fn decoder_returns_a_frame_without_waiting_for_more_bytes() {
    // A live socket with nothing after the frame: recv must return.
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = Frame::Window {
        process: "c".into(),
        stream: StdStream::Stdout,
        credit: 5,
    };
    let bytes = encode(&frame);
    a.write_all(&bytes[..3]).unwrap();
    let t = thread::spawn(move || {
        let mut dec = Decoder::new(b);
        dec.recv()
    });
    thread::sleep(Duration::from_millis(50));
    a.write_all(&bytes[3..]).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), frame);

    // A frame cut short by the peer closing: a typed error, no hang.
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x10; 50]);
    a.write_all(&bytes).unwrap();
    drop(a);
    match Decoder::new(b).recv() {
        Err(ProtoError::Truncated {
            expected: 104,
            got: 54,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn random_bytes_never_panic_or_overread() {
    let mut rng = Rng::new(0xC0FFEE);
    let mut decoded = 0;
    for round in 0..20_000 {
        let len = rng.below(if round % 10 == 0 { 4096 } else { 64 });
        let mut data = rng.bytes(len);
        // Often make the length field plausible so bodies get parsed too.
        if data.len() >= 5 && rng.below(2) == 0 {
            let l = (data.len() - 4 - rng.below(2)) as u32;
            data[..4].copy_from_slice(&l.to_be_bytes());
            data[4] = [0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12][rng.below(7)];
            // And often a plausible stream header for the binary kinds.
            if data.len() >= 8 && data[4] >= 0x10 && rng.below(2) == 0 {
                data[5] = rng.below(3) as u8;
                data[6] = 1 + rng.below((data.len() - 7).min(200)) as u8;
                for i in 0..data[6] as usize {
                    data[7 + i] = b'a' + rng.below(26) as u8;
                }
            }
        }
        let mut dec = Decoder::new(Stingy {
            data: &data,
            rng: Rng::new(round),
            fence: false,
        });
        for _ in 0..data.len() + 1 {
            match dec.recv() {
                Ok(f) => {
                    decoded += 1;
                    // Whatever decodes re-encodes and decodes to the same frame.
                    assert_eq!(decode_frame(&encode(&f)).unwrap(), f);
                }
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
        let _ = decode_frame(&data);
        let _ = frame_len(&data);
    }
    assert!(
        decoded > 100,
        "the generator should hit valid binary frames, got {decoded}"
    );
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = Rng::new(99);
    let frames: Vec<Vec<u8>> = all_frames()
        .iter()
        .filter(|f| !matches!(f, Frame::Data { data, .. } if data.len() > 1000))
        .map(encode)
        .collect();
    for _ in 0..20_000 {
        let mut bytes = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] ^= 1 << rng.below(8),
                1 => bytes[i] = rng.next_u64() as u8,
                _ => {
                    bytes.truncate(i.max(1));
                }
            }
        }
        if let Ok(f) = decode_frame(&bytes) {
            assert_eq!(decode_frame(&encode(&f)).unwrap(), f);
        }
        let mut dec = Decoder::new(&bytes[..]);
        let _ = dec.recv();
    }
}

fn handshake_pair(
    ours: impl FnOnce(&mut Encoder<UnixStream>, &mut Decoder<UnixStream>) -> Result<Hello, ProtoError>
        + Send
        + 'static,
    theirs: impl FnOnce(&mut Encoder<UnixStream>, &mut Decoder<UnixStream>) -> Result<Hello, ProtoError>
        + Send
        + 'static,
) -> (
    Result<Hello, ProtoError>,
    Result<Hello, ProtoError>,
    Decoder<UnixStream>,
) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let t = thread::spawn(move || {
        let mut enc = Encoder::new(b.try_clone().unwrap());
        let mut dec = Decoder::new(b);
        let r = theirs(&mut enc, &mut dec);
        (r, dec)
    });
    let mut enc = Encoder::new(a.try_clone().unwrap());
    let mut dec = Decoder::new(a);
    let r1 = ours(&mut enc, &mut dec);
    drop(enc);
    drop(dec);
    let (r2, dec2) = t.join().unwrap();
    (r1, r2, dec2)
}

#[test]
fn handshake_agrees_on_the_same_version() {
    let (host, agent, _) = handshake_pair(
        |e, d| handshake(e, d, "capsa-host 0.1.0"),
        |e, d| handshake(e, d, "capsa-agent 0.1.0"),
    );
    assert_eq!(host.unwrap(), Hello::new("capsa-agent 0.1.0"));
    assert_eq!(agent.unwrap(), Hello::new("capsa-host 0.1.0"));
}

#[test]
fn handshake_refuses_another_version_naming_both() {
    let (host, old_agent, mut agent_dec) = handshake_pair(
        |e, d| handshake(e, d, "capsa 0.2.0"),
        |e, d| {
            e.send(&Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                software_version: "capsa 9.9.9".into(),
            }))?;
            match d.recv()? {
                Frame::Hello(h) => Ok(h),
                other => panic!("{other:?}"),
            }
        },
    );
    let err = host.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ProtoError::VersionMismatch { .. }));
    for want in [
        format!("v{PROTOCOL_VERSION}"),
        format!("v{}", PROTOCOL_VERSION + 1),
        "capsa 0.2.0".into(),
        "capsa 9.9.9".into(),
    ] {
        assert!(msg.contains(&want), "{msg} lacks {want}");
    }
    // The other side got our hello, then an explicit refusal.
    assert_eq!(old_agent.unwrap().protocol_version, PROTOCOL_VERSION);
    match agent_dec.recv().unwrap() {
        Frame::Error(r) => {
            assert_eq!(r.code, ErrorCode::VersionMismatch);
            assert!(r.message.contains("capsa 9.9.9"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(agent_dec.recv(), Err(ProtoError::Closed)));
}

#[test]
fn handshake_refuses_a_peer_that_does_not_say_hello() {
    let (host, peer, mut peer_dec) = handshake_pair(
        |e, d| handshake(e, d, "capsa 0.1.0"),
        |e, _| {
            e.send(&Frame::Request {
                id: 1,
                request: Request::Shutdown,
            })?;
            Ok(Hello::new("-"))
        },
    );
    assert!(peer.is_ok());
    let err = host.unwrap_err();
    assert!(matches!(err, ProtoError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("request"), "{err}");
    assert!(matches!(peer_dec.recv().unwrap(), Frame::Hello(_)));
    match peer_dec.recv().unwrap() {
        Frame::Error(r) => assert_eq!(r.code, ErrorCode::Handshake),
        other => panic!("{other:?}"),
    }

    // A garbage first frame, and a peer that hangs up.
    let (host, _, _) = handshake_pair(
        |e, d| handshake(e, d, "capsa 0.1.0"),
        |e, _| {
            e.get_mut().write_all(&[0, 0, 0, 2, 0x01, b'{']).unwrap();
            Ok(Hello::new("-"))
        },
    );
    assert!(matches!(host.unwrap_err(), ProtoError::Handshake { .. }));
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let err = handshake(
        &mut Encoder::new(a.try_clone().unwrap()),
        &mut Decoder::new(a),
        "capsa 0.1.0",
    )
    .unwrap_err();
    assert!(
        matches!(err, ProtoError::Closed | ProtoError::Io(_)),
        "{err}"
    );
    assert!(err.is_fatal());
}

#[test]
fn handshake_reports_a_refusal_from_the_peer() {
    let (host, _, _) = handshake_pair(
        |e, d| handshake(e, d, "capsa 0.1.0"),
        |e, _| {
            e.send(&Frame::Error(ErrorReply::new(
                ErrorCode::VersionMismatch,
                "go away",
            )))?;
            Ok(Hello::new("-"))
        },
    );
    match host.unwrap_err() {
        ProtoError::Remote(r) => {
            assert!(handshake::is_version_refusal(&r));
            assert_eq!(r.message, "go away");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hybrid_vsock_connect_speaks_the_connect_line() {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    let dir = std::env::temp_dir().join(format!("capsa-proto-hv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let t = thread::spawn(move || {
        // 1: accept, answer, then send protocol bytes right after the line.
        let (s, _) = l.accept().unwrap();
        let mut r = io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        (&s).write_all(b"OK 3\n\x00\x00\x00\x01\x7f").unwrap();
        // 2: refuse by closing.
        let (s, _) = l.accept().unwrap();
        drop(s);
        // 3: nonsense reply.
        let (s, _) = l.accept().unwrap();
        (&s).write_all(b"NO\n").unwrap();
        // 4: never answer.
        let (s, _) = l.accept().unwrap();
        thread::sleep(Duration::from_millis(500));
        drop(s);
    });
    let mut s = connect_hybrid_vsock(&path, AGENT_PORT, Some(Duration::from_secs(5))).unwrap();
    let mut rest = [0u8; 5];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(rest, [0, 0, 0, 1, 0x7f], "bytes after OK must not be eaten");
    let e = connect_hybrid_vsock(&path, 5, None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains("port 5"), "{e}");
    let e = connect_hybrid_vsock(&path, 5, None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let e = connect_hybrid_vsock(&path, 5, Some(Duration::from_millis(100))).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    t.join().unwrap();
    let e = connect_hybrid_vsock(&dir.join("missing.sock"), 5, None).unwrap_err();
    assert!(e.to_string().contains("missing.sock"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fuzz_seeds_written_from_the_documented_layout_decode() {
    // fuzz/seeds/decode was written by hand from docs/protocol.md (not by
    // this crate's encoder): each file is a run of valid frames, except
    // `oversized`.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut frames = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let mut dec = Decoder::new(&bytes[..]);
        if path.ends_with("oversized") {
            assert!(matches!(dec.recv(), Err(ProtoError::FrameTooLarge { .. })));
            continue;
        }
        loop {
            match dec.recv() {
                Ok(_) => frames += 1,
                Err(ProtoError::Closed) => break,
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    assert_eq!(frames, 19);
}
