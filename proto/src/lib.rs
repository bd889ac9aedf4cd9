//! capsa-proto: the protocol between the host (capsa's microvm backend) and
//! `capsa-agent`, PID 1 in the guest, over one vsock byte stream.
//!
//! # Encoding
//!
//! A frame is a 4-byte big-endian length, a kind byte, and a body (see
//! [`codec`]); the length is bounded by [`MAX_FRAME`] and checked before
//! anything is allocated. Control messages (hello, requests, responses,
//! errors) are JSON: the payload of `Create` is the OCI runtime spec, which
//! is defined as JSON and whose `oci-spec` types skip empty optional fields
//! (`skip_serializing_if`), which, like our internally tagged enums, non
//! self-describing formats such as postcard or bincode cannot round-trip.
//! Control messages are few and small, so JSON's cost does not matter, and
//! it is readable in a hex dump. Messages are serialized through
//! `serde_json::Value`, whose maps are sorted, so the encoding is
//! deterministic. Stream data, the bulk of the traffic, is binary (a
//! 2-byte header plus the process id), never JSON.
//!
//! # One connection
//!
//! Requests, responses and the standard streams share one connection,
//! multiplexed by frame kind and process id. One connection means one
//! ordering: the agent sends a process's last output and its `Eof`s before
//! the `Exited` reply, so the host has every byte when it learns the exit
//! code, with no cross-connection synchronisation; and nothing about the
//! VMM's vsock (connection limits, ports) multiplies with processes.
//! Head-of-line blocking is avoided by [`flow`]: each stream has a credit
//! window, so a slow consumer of one stream never stops the connection.
//!
//! # Using it
//!
//! ```no_run
//! use capsa_proto::{handshake, Decoder, Encoder, Frame, Request};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = capsa_proto::connect_hybrid_vsock(
//!     "/run/capsa/vm/vsock.sock".as_ref(), capsa_proto::AGENT_PORT, None)?;
//! let mut enc = Encoder::new(stream.try_clone()?);
//! let mut dec = Decoder::new(std::io::BufReader::new(stream));
//! let agent = handshake(&mut enc, &mut dec, "capsa 0.1.0")?;
//! enc.send(&Frame::Request { id: 1, request: Request::Shutdown })?;
//! match dec.recv() {
//!     Ok(frame) => println!("{} answered {frame:?}", agent.software_version),
//!     // Tell the peer what was wrong with its frame, where possible.
//!     Err(e) => {
//!         if let Some(reply) = e.reply_frame() { let _ = enc.send(&reply); }
//!         return Err(e.into());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The full description is in `docs/protocol.md`.

#![warn(missing_docs)]

pub mod codec;
pub mod flow;
pub mod handshake;
pub mod hvsock;
pub mod message;

pub use codec::{
    decode_frame, encode_data, encode_frame, frame_len, Decoder, Encoder, FlowError, ProtoError,
    HEADER_LEN, MAX_FRAME,
};
pub use flow::{
    inbound, InboundReader, InboundSender, OutboundWriter, RecvWindow, SendCredit, SharedEncoder,
    Streams, INITIAL_WINDOW, MAX_DATA,
};
pub use handshake::handshake;
pub use hvsock::connect_hybrid_vsock;
pub use message::{
    BlockStats, CpuStats, ErrorCode, ErrorReply, ExecProcess, Frame, GuestInterface, GuestNetwork,
    GuestRoute, Hello, MemoryStats, NetStats, PidsStats, ProcessInfo, Request, Response, Rootfs,
    Stats, StdStream, StdioOptions, User, Volume, WinSize, WritableLayer, MAX_ID_LEN,
    PROTOCOL_VERSION, VIRTIOFS,
};

/// vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
