//! Framing: turning [`Frame`]s into bytes and back.
//!
//! ```text
//! frame  = length:u32be  kind:u8  body[length-1]      1 <= length <= MAX_FRAME
//!
//! kind 0x01 HELLO     body = JSON Hello
//! kind 0x02 REQUEST   body = JSON {"id":u64,"request":Request}
//! kind 0x03 RESPONSE  body = JSON {"id":u64,"response":Response}
//! kind 0x04 ERROR     body = JSON ErrorReply
//! kind 0x10 DATA      body = stream:u8 idlen:u8 id[idlen] bytes[..]
//! kind 0x11 WINDOW    body = stream:u8 idlen:u8 id[idlen] credit:u32be
//! kind 0x12 EOF       body = stream:u8 idlen:u8 id[idlen]
//! ```
//!
//! The length is checked against [`MAX_FRAME`] before anything is allocated,
//! and the decoder reads exactly `length` more bytes, never beyond.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{ErrorCode, ErrorReply, Frame, Hello, Request, Response, StdStream};
use crate::message::{MAX_ID_LEN, PROTOCOL_VERSION};

/// Largest value of a frame's length field (kind byte + body), 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes before the body: the length field and the kind byte.
pub const HEADER_LEN: usize = 5;

/// Frame kind bytes.
pub mod kind {
    /// [`crate::Frame::Hello`].
    pub const HELLO: u8 = 0x01;
    /// [`crate::Frame::Request`].
    pub const REQUEST: u8 = 0x02;
    /// [`crate::Frame::Response`].
    pub const RESPONSE: u8 = 0x03;
    /// [`crate::Frame::Error`].
    pub const ERROR: u8 = 0x04;
    /// [`crate::Frame::Data`].
    pub const DATA: u8 = 0x10;
    /// [`crate::Frame::Window`].
    pub const WINDOW: u8 = 0x11;
    /// [`crate::Frame::Eof`].
    pub const EOF: u8 = 0x12;
}

/// A broken flow-control rule (the per-stream windows of [`crate::flow`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The peer sent more bytes than its credit allowed.
    #[error("flow control violated: {got} data bytes arrived while only {allowed} were allowed")]
    WindowExceeded {
        /// Bytes in the offending frame.
        got: usize,
        /// Credit the peer had left.
        allowed: u64,
    },
    /// The peer granted credit beyond any possible window.
    #[error("flow control violated: a credit of {credit} would raise the window above {max}")]
    CreditOverflow {
        /// The credit granted.
        credit: u32,
        /// The most credit a sender may hold.
        max: u64,
    },
}

/// Everything that can go wrong speaking the protocol.
///
/// [`is_fatal`](ProtoError::is_fatal) says whether the connection is still
/// usable; [`reply_frame`](ProtoError::reply_frame) gives the frame to send
/// the peer about it, where one can be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The transport failed.
    #[error("protocol transport error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The connection ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, the connection ended after {got}")]
    Truncated {
        /// Bytes the frame header promised (or the header's own size).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// A frame's length field exceeds [`MAX_FRAME`]; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared (or, when encoding, actual) length.
        len: usize,
        /// The limit, [`MAX_FRAME`].
        max: usize,
    },
    /// A frame whose length, kind or body is invalid. The frame was consumed
    /// whole, so the connection is still in step.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Kind of frame, as far as known (`"unknown kind 0x.."`, `"empty"`).
        kind: String,
        /// What is wrong.
        reason: String,
        /// The request id, when a malformed request still carried one: the
        /// error reply then goes to that request.
        request_id: Option<u64>,
    },
    /// A frame this side cannot encode (id too long, frame too large, a spec
    /// that does not serialize).
    #[error("cannot encode {kind} frame: {reason}")]
    Encode {
        /// Kind of frame.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks capsa protocol v{ours} ({our_software}), \
         the peer speaks v{theirs} ({their_software}); use a capsa-agent built from the same \
         capsa release as the host (rebuild the initramfs)"
    )]
    VersionMismatch {
        /// This side's [`PROTOCOL_VERSION`].
        ours: u32,
        /// This side's software version.
        our_software: String,
        /// The peer's protocol version.
        theirs: u32,
        /// The peer's software version.
        their_software: String,
    },
    /// The peer did not start with a hello.
    #[error("handshake failed: expected a hello frame first, got {got}")]
    Handshake {
        /// What arrived instead.
        got: String,
    },
    /// The peer sent a connection-level error.
    #[error("the peer reported an error: {0}")]
    Remote(ErrorReply),
    /// A flow-control rule was broken (the stream windows of `flow`).
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl ProtoError {
    /// Whether the connection must be closed after this error. Non-fatal
    /// errors (`Malformed`, `Encode`) leave the byte stream in step.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtoError::Malformed { .. } | ProtoError::Encode { .. }
        )
    }

    /// The code an error reply about this error carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Io(_) | ProtoError::Closed | ProtoError::Encode { .. } => {
                ErrorCode::Internal
            }
            ProtoError::Truncated { .. } | ProtoError::Malformed { .. } => ErrorCode::Malformed,
            ProtoError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtoError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            ProtoError::Handshake { .. } => ErrorCode::Handshake,
            ProtoError::Remote(r) => r.code,
            ProtoError::Flow(_) => ErrorCode::FlowControl,
        }
    }

    /// The frame to tell the peer about an error this side found in what
    /// the peer sent: a [`Frame::Response`] with an error when a malformed
    /// request still named its id, else a [`Frame::Error`]. `None` when
    /// nothing useful can be sent (transport gone, or the peer's own error).
    pub fn reply_frame(&self) -> Option<Frame> {
        match self {
            ProtoError::Io(_)
            | ProtoError::Closed
            | ProtoError::Truncated { .. }
            | ProtoError::Remote(_)
            | ProtoError::Encode { .. } => None,
            ProtoError::Malformed {
                request_id: Some(id),
                ..
            } => Some(Frame::Response {
                id: *id,
                response: Response::Error(ErrorReply::new(self.code(), self.to_string())),
            }),
            _ => Some(Frame::Error(ErrorReply::new(self.code(), self.to_string()))),
        }
    }
}

#[derive(Serialize)]
struct RequestOut<'a> {
    id: u64,
    request: &'a Request,
}

#[derive(Deserialize)]
struct RequestIn {
    id: u64,
    request: Request,
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    id: u64,
    response: &'a Response,
}

#[derive(Deserialize)]
struct ResponseIn {
    id: u64,
    response: Response,
}

fn to_value<T: Serialize>(kind: &'static str, value: &T) -> Result<Value, ProtoError> {
    // Through serde_json::Value: its maps are sorted, so a message (e.g. a
    // spec holding HashMaps) always encodes to the same bytes.
    serde_json::to_value(value).map_err(|e| ProtoError::Encode {
        kind,
        reason: e.to_string(),
    })
}

fn write_json(kind: &'static str, value: &Value, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    serde_json::to_writer(out, value).map_err(|e| ProtoError::Encode {
        kind,
        reason: e.to_string(),
    })
}

fn json_body<T: Serialize>(
    kind: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    write_json(kind, &to_value(kind, value)?, out)
}

/// The one set-valued part of an OCI spec, the capability sets
/// (`HashSet`s in oci-spec), serializes in hash order: sort them so the
/// encoding stays deterministic. Their order has no meaning.
fn canonicalize_spec(spec: &mut Value) {
    if let Some(Value::Object(caps)) = spec.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(items) = set {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
}

fn stream_head(
    kind: &'static str,
    process: &str,
    stream: StdStream,
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    if process.is_empty() || process.len() > MAX_ID_LEN {
        return Err(ProtoError::Encode {
            kind,
            reason: format!(
                "process id must be 1 to {MAX_ID_LEN} bytes long, got {} bytes",
                process.len()
            ),
        });
    }
    out.push(stream.as_u8());
    out.push(process.len() as u8);
    out.extend_from_slice(process.as_bytes());
    Ok(())
}

/// Appends one whole frame (header included) to `out`. On error `out` is
/// left as it was.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    let r = encode_into(frame, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    if let Frame::Data {
        process,
        stream,
        data,
    } = frame
    {
        return encode_data(process, *stream, data, out);
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let name = frame.kind_name();
    match frame {
        Frame::Hello(h) => {
            out.push(kind::HELLO);
            json_body(name, h, out)?;
        }
        Frame::Request { id, request } => {
            out.push(kind::REQUEST);
            let mut value = to_value(name, &RequestOut { id: *id, request })?;
            if let Some(spec) = value.pointer_mut("/request/spec") {
                canonicalize_spec(spec);
            }
            write_json(name, &value, out)?;
        }
        Frame::Response { id, response } => {
            out.push(kind::RESPONSE);
            json_body(name, &ResponseOut { id: *id, response }, out)?;
        }
        Frame::Error(e) => {
            out.push(kind::ERROR);
            json_body(name, e, out)?;
        }
        Frame::Data { .. } => unreachable!("encoded by encode_data above"),
        Frame::Window {
            process,
            stream,
            credit,
        } => {
            if *credit == 0 {
                return Err(ProtoError::Encode {
                    kind: name,
                    reason: "a credit of 0".into(),
                });
            }
            out.push(kind::WINDOW);
            stream_head(name, process, *stream, out)?;
            out.extend_from_slice(&credit.to_be_bytes());
        }
        Frame::Eof { process, stream } => {
            out.push(kind::EOF);
            stream_head(name, process, *stream, out)?;
        }
    }
    finish_header(name, start, out)
}

fn finish_header(name: &'static str, start: usize, out: &mut [u8]) -> Result<(), ProtoError> {
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        return Err(ProtoError::Encode {
            kind: name,
            reason: format!("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes"),
        });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends a `Data` frame for `data` without copying it into a [`Frame`].
/// `data` must not be empty (an empty frame would mean nothing). On error
/// `out` is left as it was.
pub fn encode_data(
    process: &str,
    stream: StdStream,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind::DATA);
    let r = stream_head("data", process, stream, out).and_then(|()| {
        if data.is_empty() {
            return Err(ProtoError::Encode {
                kind: "data",
                reason: "no data bytes".into(),
            });
        }
        if 3 + process.len() + data.len() > MAX_FRAME {
            return Err(ProtoError::Encode {
                kind: "data",
                reason: format!("{} data bytes do not fit in one frame", data.len()),
            });
        }
        out.extend_from_slice(data);
        finish_header("data", start, out)
    });
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Checks the header at the start of `buf`: `Ok(None)` when fewer than four
/// bytes are there, else the whole frame's size (header included), which
/// may be more than `buf` holds. For decoders that fill their own buffers
/// (e.g. an async adapter): read until `buf` holds that many bytes, then
/// call [`decode_frame`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
    check_len(len)?;
    Ok(Some(4 + len))
}

fn check_len(len: usize) -> Result<(), ProtoError> {
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(())
}

/// Decodes exactly one whole frame (header included).
pub fn decode_frame(buf: &[u8]) -> Result<Frame, ProtoError> {
    let Some(total) = frame_len(buf)? else {
        return Err(ProtoError::Truncated {
            expected: 4,
            got: buf.len(),
        });
    };
    if buf.len() < total {
        return Err(ProtoError::Truncated {
            expected: total,
            got: buf.len(),
        });
    }
    if buf.len() > total {
        return Err(malformed(
            "any",
            format!("{} bytes after the frame's end", buf.len() - total),
        ));
    }
    decode_payload(&buf[4..])
}

fn malformed(kind: impl Into<String>, reason: impl Into<String>) -> ProtoError {
    ProtoError::Malformed {
        kind: kind.into(),
        reason: reason.into(),
        request_id: None,
    }
}

/// Decodes a frame's payload: kind byte + body (what the length counts).
fn decode_payload(payload: &[u8]) -> Result<Frame, ProtoError> {
    let Some((&k, body)) = payload.split_first() else {
        return Err(malformed("empty", "a frame of length 0 has no kind byte"));
    };
    let json_err = |name: &str, e: serde_json::Error| malformed(name, e.to_string());
    match k {
        kind::HELLO => serde_json::from_slice::<Hello>(body)
            .map(Frame::Hello)
            .map_err(|e| json_err("hello", e)),
        kind::REQUEST => match serde_json::from_slice::<RequestIn>(body) {
            Ok(r) => match r.request.validate() {
                Ok(()) => Ok(Frame::Request {
                    id: r.id,
                    request: r.request,
                }),
                Err(reason) => Err(ProtoError::Malformed {
                    kind: format!("{} request", r.request.name()),
                    reason,
                    request_id: Some(r.id),
                }),
            },
            Err(e) => Err(ProtoError::Malformed {
                kind: "request".into(),
                reason: e.to_string(),
                request_id: serde_json::from_slice::<IdOnly>(body).ok().map(|i| i.id),
            }),
        },
        kind::RESPONSE => serde_json::from_slice::<ResponseIn>(body)
            .map(|r| Frame::Response {
                id: r.id,
                response: r.response,
            })
            .map_err(|e| json_err("response", e)),
        kind::ERROR => serde_json::from_slice::<ErrorReply>(body)
            .map(Frame::Error)
            .map_err(|e| json_err("error", e)),
        kind::DATA => {
            let (process, stream, rest) = split_stream_head("data", body)?;
            if rest.is_empty() {
                return Err(malformed("data", "no data bytes"));
            }
            Ok(Frame::Data {
                process,
                stream,
                data: rest.to_vec(),
            })
        }
        kind::WINDOW => {
            let (process, stream, rest) = split_stream_head("window", body)?;
            let credit: [u8; 4] = rest.try_into().map_err(|_| {
                malformed(
                    "window",
                    format!("credit must be 4 bytes, got {}", rest.len()),
                )
            })?;
            let credit = u32::from_be_bytes(credit);
            if credit == 0 {
                return Err(malformed("window", "credit of 0"));
            }
            Ok(Frame::Window {
                process,
                stream,
                credit,
            })
        }
        kind::EOF => {
            let (process, stream, rest) = split_stream_head("eof", body)?;
            if !rest.is_empty() {
                return Err(malformed(
                    "eof",
                    format!("{} bytes after the process id", rest.len()),
                ));
            }
            Ok(Frame::Eof { process, stream })
        }
        other => Err(malformed(
            format!("unknown kind 0x{other:02x}"),
            format!(
                "this side (protocol v{PROTOCOL_VERSION}) does not know frame kind 0x{other:02x}"
            ),
        )),
    }
}

fn split_stream_head<'a>(
    name: &str,
    body: &'a [u8],
) -> Result<(String, StdStream, &'a [u8]), ProtoError> {
    let [s, n, rest @ ..] = body else {
        return Err(malformed(name, "shorter than its stream header"));
    };
    let stream =
        StdStream::from_u8(*s).ok_or_else(|| malformed(name, format!("unknown stream {s}")))?;
    let n = *n as usize;
    if n == 0 {
        return Err(malformed(name, "empty process id"));
    }
    let Some((id, rest)) = rest.split_at_checked(n) else {
        return Err(malformed(
            name,
            format!("process id of {n} bytes runs past the frame's end"),
        ));
    };
    let id = std::str::from_utf8(id)
        .map_err(|_| malformed(name, "process id is not UTF-8"))?
        .to_owned();
    Ok((id, stream, rest))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Appends at most `limit` bytes from `r` to `buf`, stopping early only at
/// the end of the stream; returns the bytes appended. Reads in steps of at
/// most 64 KiB, so the buffer grows with the data, not with `limit`.
fn read_to_end_bounded<R: Read>(r: &mut R, limit: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    const STEP: usize = 64 * 1024;
    let start = buf.len();
    while buf.len() - start < limit {
        let have = buf.len();
        let want = (limit - (have - start)).min(STEP);
        buf.resize(have + want, 0);
        let got = read_full(r, &mut buf[have..])?;
        buf.truncate(have + got);
        if got < want {
            break;
        }
    }
    Ok(buf.len() - start)
}

/// Writes frames to a blocking byte stream. Each frame goes out with one
/// `write_all` and a `flush`.
#[derive(Debug)]
pub struct Encoder<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    /// An encoder writing to `inner`.
    pub fn new(inner: W) -> Self {
        Encoder {
            inner,
            buf: Vec::new(),
        }
    }

    /// Sends one frame. An `Encode` error leaves the stream untouched.
    pub fn send(&mut self, frame: &Frame) -> Result<(), ProtoError> {
        self.buf.clear();
        encode_frame(frame, &mut self.buf)?;
        self.flush_buf()
    }

    /// Sends a `Data` frame without building a [`Frame`].
    pub fn send_data(
        &mut self,
        process: &str,
        stream: StdStream,
        data: &[u8],
    ) -> Result<(), ProtoError> {
        self.buf.clear();
        encode_data(process, stream, data, &mut self.buf)?;
        self.flush_buf()
    }

    fn flush_buf(&mut self) -> Result<(), ProtoError> {
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        if self.buf.capacity() > 256 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying writer, mutably (writing to it directly breaks framing).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives the writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads frames from a blocking byte stream.
///
/// It reads the 4-byte length, refuses a length over [`MAX_FRAME`] before
/// allocating, then reads exactly that many bytes: never more, so it never
/// waits for bytes beyond the frame. It does no buffering of its own; wrap
/// the reader in a [`std::io::BufReader`] to save system calls.
#[derive(Debug)]
pub struct Decoder<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Decoder<R> {
    /// A decoder reading from `inner`.
    pub fn new(inner: R) -> Self {
        Decoder {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads the next frame. [`ProtoError::Closed`] means the peer closed
    /// cleanly between frames. After a non-fatal error (see
    /// [`ProtoError::is_fatal`]) the next call reads the next frame.
    pub fn recv(&mut self) -> Result<Frame, ProtoError> {
        let mut head = [0u8; 4];
        match read_full(&mut self.inner, &mut head)? {
            0 => return Err(ProtoError::Closed),
            4 => {}
            got => return Err(ProtoError::Truncated { expected: 4, got }),
        }
        let len = u32::from_be_bytes(head) as usize;
        check_len(len)?;
        self.buf.clear();
        // Grows with the bytes that actually arrive (up to `len`, which is
        // bounded): a peer that declares 1 MiB and sends 10 bytes costs 10.
        let got = read_to_end_bounded(&mut self.inner, len, &mut self.buf)?;
        if got < len {
            return Err(ProtoError::Truncated {
                expected: 4 + len,
                got: 4 + got,
            });
        }
        let frame = decode_payload(&self.buf);
        if self.buf.capacity() > 256 * 1024 {
            self.buf = Vec::new();
        }
        frame
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (reading from it directly breaks framing).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}
