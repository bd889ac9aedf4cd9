//! The versioned handshake: the first frame each way is a [`Hello`].

use std::io::{Read, Write};

use crate::codec::{Decoder, Encoder, ProtoError};
use crate::message::{ErrorCode, ErrorReply, Frame, Hello, PROTOCOL_VERSION};

/// Runs the handshake on a fresh connection; both sides call it (neither
/// waits for the other before sending, so the order does not matter).
///
/// Sends this side's hello (protocol [`PROTOCOL_VERSION`], `software_version`
/// e.g. `"capsa 0.1.0"`), reads the peer's and returns it. A peer with
/// another protocol version is refused: it gets an error frame with code
/// `version_mismatch`, and this side gets [`ProtoError::VersionMismatch`]
/// naming both versions. A first frame that is not a hello is refused the
/// same way ([`ProtoError::Handshake`]). After an error, close the
/// connection.
pub fn handshake<R: Read, W: Write>(
    enc: &mut Encoder<W>,
    dec: &mut Decoder<R>,
    software_version: &str,
) -> Result<Hello, ProtoError> {
    enc.send(&Frame::Hello(Hello::new(software_version)))?;
    let refuse = |enc: &mut Encoder<W>, err: ProtoError| {
        // Best effort: the peer may be gone already.
        if let Some(f) = err.reply_frame() {
            let _ = enc.send(&f);
        }
        err
    };
    match dec.recv() {
        Ok(Frame::Hello(peer)) if peer.protocol_version == PROTOCOL_VERSION => Ok(peer),
        Ok(Frame::Hello(peer)) => Err(refuse(
            enc,
            ProtoError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                our_software: software_version.to_owned(),
                theirs: peer.protocol_version,
                their_software: peer.software_version,
            },
        )),
        Ok(Frame::Error(reply)) => Err(ProtoError::Remote(reply)),
        Ok(other) => Err(refuse(
            enc,
            ProtoError::Handshake {
                got: format!("a {} frame", other.kind_name()),
            },
        )),
        Err(e @ ProtoError::Malformed { .. }) => Err(refuse(
            enc,
            ProtoError::Handshake {
                got: format!("a bad frame ({e})"),
            },
        )),
        Err(e) => Err(refuse(enc, e)),
    }
}

/// Whether an error reply is the peer refusing our protocol version.
pub fn is_version_refusal(reply: &ErrorReply) -> bool {
    reply.code == ErrorCode::VersionMismatch
}
