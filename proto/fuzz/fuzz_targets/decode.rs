//! Fuzzes the frame decoder with arbitrary bytes, as a peer could send them.
//!
//! Properties checked beyond "no panic, no hang, no huge allocation":
//! - the stream decoder keeps going after non-fatal errors and stops on
//!   fatal ones, and only reads the input it is given (a slice reader);
//! - every frame that decodes re-encodes, and decodes again to itself;
//! - every error has a well-formed reply, where one is due.

#![no_main]

use capsa_proto::{decode_frame, encode_frame, frame_len, Decoder, ProtoError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = Decoder::new(data);
    // Each successful or non-fatal recv consumes at least the 4-byte length
    // field, so this bound is never what ends the loop.
    for _ in 0..=data.len() / 4 + 1 {
        match dec.recv() {
            Ok(frame) => {
                let mut buf = Vec::new();
                encode_frame(&frame, &mut buf).expect("a decoded frame re-encodes");
                assert_eq!(
                    decode_frame(&buf).expect("a re-encoded frame decodes"),
                    frame
                );
            }
            Err(ProtoError::Closed) => break,
            Err(e) => {
                if let Some(reply) = e.reply_frame() {
                    let mut buf = Vec::new();
                    encode_frame(&reply, &mut buf).expect("an error reply encodes");
                }
                if e.is_fatal() {
                    break;
                }
            }
        }
    }
    let _ = frame_len(data);
    let _ = decode_frame(data);
});
