//! One host connection: the handshake, then the frame loop — requests go to
//! [`Agent::handle`], stdin data and window updates to the process they
//! name — and, when the connection closes, cutting its processes loose.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use capsa_proto::{
    handshake, Decoder, Encoder, ErrorCode, ErrorReply, Frame, ProtoError, SharedEncoder, StdStream,
};

use super::Agent;

impl Agent {
    /// Serves one host connection until it closes.
    pub fn serve(self: &Arc<Self>, stream: UnixStream) {
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.serve_inner(id, stream) {
            crate::guest::say(&format!("host connection {id}: {e:#}"));
        }
        let mut st = self.lock();
        st.conns.remove(&id);
        for p in st.procs.values_mut() {
            if p.conn == id {
                for (_, c) in &p.credits {
                    c.close();
                }
                if let Some(s) = p.stdin.take() {
                    s.fail("the host connection closed");
                }
            }
        }
        st.forget_orphans();
        self.cv.notify_all();
    }

    fn serve_inner(self: &Arc<Self>, id: u64, stream: UnixStream) -> Result<()> {
        let mut enc = Encoder::new(stream.try_clone()?);
        let mut dec = Decoder::new(BufReader::new(stream.try_clone()?));
        let peer = handshake(&mut enc, &mut dec, crate::SOFTWARE_VERSION)?;
        if self.debug {
            crate::guest::say(&format!("connection {id} from {}", peer.software_version));
        }
        self.lock().conns.insert(id, stream);
        self.cv.notify_all();
        let enc = SharedEncoder::new(enc);
        loop {
            let frame = match dec.recv() {
                Ok(f) => f,
                Err(ProtoError::Closed) => return Ok(()),
                Err(e) => {
                    if let Some(reply) = e.reply_frame() {
                        let _ = enc.send(&reply);
                    }
                    if e.is_fatal() {
                        return Err(e.into());
                    }
                    continue;
                }
            };
            match frame {
                Frame::Request { id: rid, request } => {
                    if self.debug {
                        crate::guest::say(&format!("request {rid}: {}", request.name()));
                    }
                    if let Some(resp) = self.handle(id, &enc, rid, request) {
                        enc.send(&Frame::Response {
                            id: rid,
                            response: resp,
                        })?;
                    }
                }
                Frame::Data {
                    process,
                    stream: StdStream::Stdin,
                    data,
                } => {
                    let st = self.lock();
                    match st.procs.get(&process).and_then(|p| p.stdin.as_ref()) {
                        Some(s) => {
                            if let Err(e) = s.push(&data) {
                                drop(st);
                                if let Some(reply) = e.reply_frame() {
                                    let _ = enc.send(&reply);
                                }
                                if e.is_fatal() {
                                    return Err(e.into());
                                }
                            }
                        }
                        // Stdin of a process that is gone (or has none
                        // open): the bytes have nowhere to go.
                        None if st.procs.get(&process).is_some_and(|p| p.exit.is_some()) => {}
                        None => {
                            drop(st);
                            enc.send(&Frame::Error(ErrorReply::new(
                                ErrorCode::InvalidRequest,
                                format!("stdin data for {process:?}, which has no open stdin"),
                            )))?;
                        }
                    }
                }
                Frame::Eof {
                    process,
                    stream: StdStream::Stdin,
                } => {
                    if let Some(p) = self.lock().procs.get_mut(&process) {
                        if let Some(s) = p.stdin.take() {
                            s.finish();
                        }
                    }
                }
                Frame::Window {
                    process,
                    stream,
                    credit,
                } => {
                    let st = self.lock();
                    let c = st
                        .procs
                        .get(&process)
                        .and_then(|p| p.credits.iter().find(|(s, _)| *s == stream))
                        .map(|(_, c)| c.clone());
                    drop(st);
                    if let Some(c) = c {
                        if let Err(e) = c.grant(credit) {
                            let e = ProtoError::from(e);
                            let _ = enc.send(&e.reply_frame().expect("flow errors have replies"));
                            return Err(e.into());
                        }
                    }
                }
                Frame::Error(reply) => {
                    crate::guest::say(&format!("the host reported an error: {reply}"));
                }
                other => {
                    enc.send(&Frame::Error(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        format!("unexpected {} frame from the host", other.kind_name()),
                    )))?;
                }
            }
        }
    }
}
