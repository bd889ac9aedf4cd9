//! Fuzzes what a peer's frames can do to a connection's stream table: frames
//! decoded from arbitrary bytes go through `Streams::dispatch`, with readers
//! draining the inbound streams in between.
//!
//! Checked: no panic, no hang (a reader is only read when it has bytes or
//! its stream ended), an inbound stream never holds more than its window,
//! and a data error is either a flow violation or data after eof.

#![no_main]

use std::io::{Read, Sink};

use capsa_proto::{
    Decoder, Encoder, InboundReader, OutboundWriter, ProtoError, SharedEncoder, StdStream, Streams,
};
use libfuzzer_sys::fuzz_target;

// Small, so that short inputs reach the window limit.
const WINDOW: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let streams = Streams::new(SharedEncoder::new(Encoder::new(std::io::sink())), WINDOW);
    let mut readers: Vec<(&str, StdStream, InboundReader, bool)> = Vec::new();
    let mut writers: Vec<OutboundWriter<Sink>> = Vec::new();
    for p in ["c1", "e1"] {
        for s in [StdStream::Stdin, StdStream::Stdout, StdStream::Stderr] {
            readers.push((p, s, streams.open_inbound(p, s), false));
            writers.push(streams.open_outbound(p, s));
        }
    }
    let mut dec = Decoder::new(data);
    let mut buf = vec![0u8; 1000];
    for step in 0..=data.len() / 4 + 1 {
        let frame = match dec.recv() {
            Ok(f) => f,
            Err(e) if e.is_fatal() => break,
            Err(_) => continue,
        };
        match streams.dispatch(frame) {
            Ok(_) => {}
            Err(ProtoError::Flow(_)) | Err(ProtoError::Malformed { .. }) => {}
            Err(e) => panic!("unexpected dispatch error: {e}"),
        }
        if step == 6 {
            streams.close_process("e1");
        }
        for (p, s, r, ended) in readers.iter_mut() {
            let Some(n) = streams.buffered(p, *s) else {
                continue;
            };
            assert!(n <= WINDOW as usize, "{n} buffered");
            if n > 0 && !*ended {
                match r.read(&mut buf[..n.min(13)]) {
                    Ok(0) => *ended = true,
                    Ok(_) => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    streams.fail_all("done");
    for w in &writers {
        assert!(w.credit().available() <= u64::from(u32::MAX));
    }
});
