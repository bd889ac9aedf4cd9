//! The host's connection to capsa-agent: requests and their replies, and
//! the standard streams, over one hybrid-vsock connection (capsa-proto).

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use capsa_proto::{
    Decoder, Encoder, Frame, OutboundWriter, Request, Response, SendCredit, SharedEncoder,
    StdStream, AGENT_PORT, INITIAL_WINDOW,
};

type Key = (String, StdStream);
type Reply = std::result::Result<Response, String>;

#[derive(Default)]
struct Routes {
    pending: HashMap<u64, mpsc::Sender<Reply>>,
    /// Where a process's stdout/stderr bytes go.
    sinks: HashMap<Key, std::fs::File>,
    /// Credit the agent granted us for a process's stdin.
    credits: HashMap<String, Arc<SendCredit>>,
    closed: Option<String>,
}

pub struct AgentConn {
    enc: SharedEncoder<UnixStream>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
    stream: UnixStream,
}

impl AgentConn {
    /// Connects to the agent through the VMM's vsock socket, retrying until
    /// the guest has booted far enough to listen or `timeout` passes.
    pub fn connect(uds: &Path, timeout: Duration, alive: &mut dyn FnMut() -> bool) -> Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match capsa_proto::connect_hybrid_vsock(uds, AGENT_PORT, Some(Duration::from_secs(5))) {
                Ok(s) => break s,
                Err(e) => {
                    if !alive() {
                        bail!("the microVM exited before its agent answered");
                    }
                    if start.elapsed() > timeout {
                        bail!(
                            "the guest agent did not answer within {}s ({e}); the guest may be stuck booting — see its console log",
                            timeout.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut enc = Encoder::new(stream.try_clone()?);
        let mut dec = Decoder::new(BufReader::new(stream.try_clone()?));
        capsa_proto::handshake(
            &mut enc,
            &mut dec,
            concat!("capsa ", env!("CARGO_PKG_VERSION")),
        )
        .context("handshake with the guest agent")?;
        stream.set_read_timeout(None)?;
        let enc = SharedEncoder::new(enc);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (r, e) = (Arc::clone(&routes), enc.clone());
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(dec, e, r))?;
        Ok(AgentConn {
            enc,
            routes,
            next_id: AtomicU64::new(1),
            stream,
        })
    }

    /// Sends a request and waits for its reply.
    pub fn request(&self, request: Request) -> Result<Response> {
        let what = request.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut r = self.routes.lock().unwrap();
            if let Some(why) = &r.closed {
                bail!("the guest agent is gone: {why}");
            }
            r.pending.insert(id, tx);
        }
        self.enc
            .send(&Frame::Request { id, request })
            .with_context(|| format!("sending {what} to the guest agent"))?;
        match rx.recv() {
            Ok(Ok(Response::Error(e))) => Err(anyhow!("the guest agent refused {what}: {e}")),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(why)) => Err(anyhow!("the guest agent is gone during {what}: {why}")),
            Err(_) => Err(anyhow!("the guest agent is gone during {what}")),
        }
    }

    /// Whether `process`'s `stream` is still routed (its end not yet seen).
    pub fn output_open(&self, process: &str, stream: StdStream) -> bool {
        self.routes
            .lock()
            .unwrap()
            .sinks
            .contains_key(&(process.to_string(), stream))
    }

    /// Sends `process`'s `stream` bytes to `sink` (closed at the stream's end).
    pub fn route_output(&self, process: &str, stream: StdStream, sink: OwnedFd) {
        self.routes
            .lock()
            .unwrap()
            .sinks
            .insert((process.to_string(), stream), std::fs::File::from(sink));
    }

    /// A writer for `process`'s stdin, flow-controlled by the agent's window.
    pub fn stdin_writer(&self, process: &str) -> OutboundWriter<UnixStream> {
        let credit = Arc::new(SendCredit::new(INITIAL_WINDOW));
        self.routes
            .lock()
            .unwrap()
            .credits
            .insert(process.to_string(), Arc::clone(&credit));
        OutboundWriter::new(self.enc.clone(), credit, process, StdStream::Stdin)
    }

    /// Copies `input` to `process`'s stdin on a thread, then closes it.
    pub fn pump_stdin(&self, process: &str, input: OwnedFd) -> Result<()> {
        let mut writer = self.stdin_writer(process);
        std::thread::Builder::new()
            .name("agent-stdin".into())
            .spawn(move || {
                let mut input = std::fs::File::from(input);
                let _ = std::io::copy(&mut input, &mut writer);
                let _ = writer.close();
            })?;
        Ok(())
    }
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn read_loop(
    mut dec: Decoder<BufReader<UnixStream>>,
    enc: SharedEncoder<UnixStream>,
    routes: Arc<Mutex<Routes>>,
) {
    let why = loop {
        let frame = match dec.recv() {
            Ok(f) => f,
            Err(e) => {
                if let Some(reply) = e.reply_frame() {
                    let _ = enc.send(&reply);
                }
                if e.is_fatal() {
                    break e.to_string();
                }
                continue;
            }
        };
        match frame {
            Frame::Response { id, response } => {
                if let Some(tx) = routes.lock().unwrap().pending.remove(&id) {
                    let _ = tx.send(Ok(response));
                }
            }
            Frame::Data {
                process,
                stream,
                data,
            } => {
                // Take the sink out while writing: a slow reader must not
                // hold the routing lock.
                let key = (process, stream);
                let sink = routes.lock().unwrap().sinks.remove(&key);
                if let Some(mut sink) = sink {
                    let ok = sink.write_all(&data).is_ok();
                    if ok {
                        routes.lock().unwrap().sinks.insert(key.clone(), sink);
                    }
                }
                // The bytes are consumed (or dropped for a gone reader):
                // hand the window back either way so the agent never stalls.
                let _ = enc.send(&Frame::Window {
                    process: key.0,
                    stream: key.1,
                    credit: data.len() as u32,
                });
            }
            Frame::Eof { process, stream } => {
                routes.lock().unwrap().sinks.remove(&(process, stream));
            }
            Frame::Window {
                process, credit, ..
            } => {
                if let Some(c) = routes.lock().unwrap().credits.get(&process) {
                    let _ = c.grant(credit);
                }
            }
            Frame::Error(e) => {
                tracing::warn!("the guest agent reported: {e}");
            }
            Frame::Hello(_) | Frame::Request { .. } => {}
        }
    };
    let mut r = routes.lock().unwrap();
    r.closed = Some(why.clone());
    for (_, tx) in r.pending.drain() {
        let _ = tx.send(Err(why.clone()));
    }
    r.sinks.clear();
    for c in r.credits.values() {
        c.close();
    }
}
