//! The agent's side of capsa-proto: one thread per host connection, reading
//! frames and answering requests, plus threads that move each process's
//! standard streams with flow control.
//!
//! One container per guest. Every process (the container's init, named by
//! the container id, and each exec'd process, named by its exec id) belongs
//! to the connection that created it: its output goes there. If that
//! connection closes, its output is drained and dropped, so the process
//! never blocks on a full pipe.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capsa_proto::{
    handshake, inbound, Decoder, Encoder, ErrorCode, ErrorReply, ExecProcess, Frame, InboundSender,
    OutboundWriter, ProtoError, Request, Response, SendCredit, SharedEncoder, StdStream,
    StdioOptions, INITIAL_WINDOW,
};
use capsa_shim::backend::{ExecRequest, ProcessIo};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::container::{Container, STATE_DIR};
use crate::reaper::Reaper;

type Conn = SharedEncoder<UnixStream>;

/// One process the agent runs (the container's init or an exec'd one).
struct Proc {
    pid: i32,
    init: bool,
    exit: Option<i32>,
    /// Output streams whose Eof has not been sent yet.
    outputs_open: usize,
    master: Option<OwnedFd>,
    stdin: Option<InboundSender>,
    credits: Vec<(StdStream, Arc<SendCredit>)>,
    conn: u64,
}

#[derive(Default)]
struct State {
    container: Option<Container>,
    creating: bool,
    procs: HashMap<String, Proc>,
    /// Live connections: a handle to shut each down at power-off.
    conns: HashMap<u64, UnixStream>,
    /// The container's exit was reported to the host.
    exit_reported: bool,
    poweroff: Option<String>,
}

/// The agent's shared state.
pub struct Agent {
    state: Mutex<State>,
    cv: Condvar,
    reaper: OnceLock<Arc<Reaper>>,
    next_conn: AtomicU64,
    console_seq: AtomicU64,
    debug: bool,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, msg))
}

impl Agent {
    pub fn new(debug: bool) -> Arc<Agent> {
        Arc::new(Agent {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            reaper: OnceLock::new(),
            next_conn: AtomicU64::new(1),
            console_seq: AtomicU64::new(1),
            debug,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the zombie reaper and signal forwarding.
    pub fn start_reaper(self: &Arc<Self>) -> io::Result<()> {
        let on_exit = Arc::clone(self);
        let on_sig = Arc::clone(self);
        let reaper = Reaper::start(
            Box::new(move |pid, code| on_exit.exited(pid, code)),
            Box::new(move |sig| on_sig.forward(sig)),
        )?;
        let _ = self.reaper.set(reaper);
        Ok(())
    }

    fn reaper(&self) -> &Reaper {
        self.reaper.get().expect("start_reaper was called")
    }

    fn exited(&self, pid: i32, code: i32) {
        let mut st = self.lock();
        for p in st.procs.values_mut() {
            if p.pid == pid && p.exit.is_none() {
                p.exit = Some(code);
                // The process is gone: nothing will read its stdin now.
                p.stdin = None;
            }
        }
        self.cv.notify_all();
    }

    fn forward(&self, sig: Signal) {
        let st = self.lock();
        if let Some(c) = &st.container {
            let _ = c.kill(sig);
        }
    }

    /// Asks for the guest to be powered off.
    pub fn request_poweroff(&self, why: impl Into<String>) {
        let mut st = self.lock();
        st.poweroff.get_or_insert_with(|| why.into());
        self.cv.notify_all();
    }

    /// Blocks until the guest should power off; returns why. That is: on
    /// request (`Shutdown`), once the container's init has exited and the
    /// host has been told (or no host is connected to tell), or when no
    /// container was created within `create_timeout` of the call.
    pub fn wait_for_poweroff(&self, create_timeout: Option<Duration>) -> String {
        let start = Instant::now();
        let mut st = self.lock();
        loop {
            if let Some(why) = &st.poweroff {
                return why.clone();
            }
            if let Some(c) = &st.container {
                let init = st.procs.get(c.id());
                let done = init.is_none_or(|p| p.exit.is_some() && p.outputs_open == 0);
                if done && (st.exit_reported || st.conns.is_empty()) {
                    let code = init.and_then(|p| p.exit).unwrap_or(-1);
                    return format!("the container exited with code {code}");
                }
            } else if let Some(t) = create_timeout {
                if !st.creating && start.elapsed() >= t {
                    return format!(
                        "no container was created within {}s of boot (is the host connected to vsock port {}?)",
                        t.as_secs(),
                        capsa_proto::AGENT_PORT
                    );
                }
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Ends everything before power-off: kills the processes, gives the
    /// host up to `linger` to read the last frames and close its
    /// connections, then releases the container.
    pub fn teardown(&self, linger: Duration) {
        let mut container = {
            let mut st = self.lock();
            for p in st.procs.values() {
                if p.exit.is_none() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
            // The host closes once it has read what it wanted (it may
            // still send Shutdown, which is answered).
            let deadline = Instant::now() + linger;
            while !st.conns.is_empty() && Instant::now() < deadline {
                st = self
                    .cv
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            for c in st.conns.values() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            st.container.take()
        };
        if let Some(c) = &mut container {
            let _ops = self.reaper.get().map(|r| r.ops());
            c.destroy();
        }
    }

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

    /// Answers a request; `None` when the answer comes later (`Wait`).
    fn handle(self: &Arc<Self>, conn: u64, enc: &Conn, rid: u64, req: Request) -> Option<Response> {
        Some(match req {
            Request::Create {
                container_id,
                spec,
                rootfs,
                stdio,
            } => self.create(conn, enc, container_id, *spec, rootfs, stdio),
            Request::Start { container_id } => {
                let mut st = self.lock();
                match st.container.as_mut() {
                    Some(c) if c.id() == container_id => match c.start() {
                        Ok(()) => Response::Ok,
                        Err(e) => err(ErrorCode::InvalidState, format!("{e:#}")),
                    },
                    _ => not_found(&container_id),
                }
            }
            Request::Exec {
                container_id,
                exec_id,
                process,
                stdio,
            } => self.exec(conn, enc, container_id, exec_id, process, stdio),
            Request::Signal { id, signal } => self.signal(&id, signal),
            Request::Wait { id } => {
                let me = Arc::clone(self);
                let enc = enc.clone();
                std::thread::spawn(move || {
                    let response = me.wait(&id);
                    let sent = enc.send(&Frame::Response { id: rid, response });
                    if sent.is_ok() {
                        me.reported(&id);
                    }
                });
                return None;
            }
            Request::ResizeTty { id, rows, cols } => {
                let st = self.lock();
                match st.procs.get(&id) {
                    None => not_found(&id),
                    Some(Proc { master: None, .. }) => {
                        err(ErrorCode::InvalidState, format!("{id} has no terminal"))
                    }
                    Some(Proc {
                        master: Some(m), ..
                    }) => match set_winsize(m.as_raw_fd(), rows, cols) {
                        Ok(()) => Response::Ok,
                        Err(e) => err(ErrorCode::Internal, format!("resizing the terminal: {e}")),
                    },
                }
            }
            Request::Stats { container_id } => {
                let st = self.lock();
                match &st.container {
                    Some(c) if c.id() == container_id => {
                        Response::Stats(crate::container::stats(&c.cgroup_dir()))
                    }
                    _ => not_found(&container_id),
                }
            }
            Request::Shutdown => {
                self.request_poweroff("the host asked for a shutdown");
                Response::Ok
            }
        })
    }

    fn create(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        id: String,
        spec: oci_spec::runtime::Spec,
        rootfs: capsa_proto::Rootfs,
        stdio: StdioOptions,
    ) -> Response {
        if let Err(e) = crate::container::check_id(&id) {
            return err(ErrorCode::InvalidRequest, format!("{e:#}"));
        }
        {
            let mut st = self.lock();
            if st.container.is_some() || st.creating {
                return err(
                    ErrorCode::AlreadyExists,
                    "this guest already has a container (one per microVM)",
                );
            }
            st.creating = true;
        }
        let result = (|| -> Result<()> {
            let (io, wiring) = self.wiring(&stdio)?;
            let ops = self.reaper().ops();
            let (container, _pid) = Container::create(&id, spec, &rootfs, io, |pid| {
                self.lock().procs.insert(
                    id.clone(),
                    Proc {
                        pid,
                        init: true,
                        exit: None,
                        outputs_open: 0,
                        master: None,
                        stdin: None,
                        credits: Vec::new(),
                        conn,
                    },
                );
            })?;
            drop(ops);
            self.lock().container = Some(container);
            self.connect_streams(conn, enc, &id, wiring, &stdio)
        })();
        let mut st = self.lock();
        st.creating = false;
        self.cv.notify_all();
        match result {
            Ok(()) => Response::Ok,
            Err(e) => {
                st.procs.remove(&id);
                err(ErrorCode::Internal, format!("{e:#}"))
            }
        }
    }

    fn exec(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        container_id: String,
        exec_id: String,
        process: ExecProcess,
        stdio: StdioOptions,
    ) -> Response {
        {
            let st = self.lock();
            match &st.container {
                Some(c) if c.id() == container_id => {}
                _ => return not_found(&container_id),
            }
            if st.procs.contains_key(&exec_id) {
                return err(
                    ErrorCode::AlreadyExists,
                    format!("a process named {exec_id:?} exists already"),
                );
            }
            if st
                .procs
                .get(&container_id)
                .is_some_and(|p| p.exit.is_some())
            {
                return err(
                    ErrorCode::InvalidState,
                    format!("container {container_id} is not running"),
                );
            }
        }
        let req = ExecRequest {
            args: process.args,
            env: process.env,
            workdir: process.cwd,
            user: process.user.map(|u| (u.uid, u.gid)),
            tty: stdio.tty,
        };
        let result = (|| -> Result<()> {
            let (io, wiring) = self.wiring(&stdio)?;
            let _ops = self.reaper().ops();
            let mut st = self.lock();
            let c = st.container.as_ref().context("the container is gone")?;
            let pid = c.exec(&req, io)?;
            st.procs.insert(
                exec_id.clone(),
                Proc {
                    pid,
                    init: false,
                    exit: None,
                    outputs_open: 0,
                    master: None,
                    stdin: None,
                    credits: Vec::new(),
                    conn,
                },
            );
            drop(st);
            drop(_ops);
            self.connect_streams(conn, enc, &exec_id, wiring, &stdio)
        })();
        match result {
            Ok(()) => Response::Ok,
            Err(e) => err(ErrorCode::Internal, format!("{e:#}")),
        }
    }

    fn signal(&self, id: &str, signal: i32) -> Response {
        let Ok(sig) = Signal::try_from(signal) else {
            return err(
                ErrorCode::InvalidRequest,
                format!("no signal number {signal}"),
            );
        };
        let st = self.lock();
        let Some(p) = st.procs.get(id) else {
            return not_found(id);
        };
        if p.exit.is_some() {
            return err(ErrorCode::InvalidState, format!("{id} has exited"));
        }
        let r = match (&st.container, p.init) {
            (Some(c), true) => c.kill(sig),
            _ => nix::sys::signal::kill(Pid::from_raw(p.pid), sig).map_err(Into::into),
        };
        match r {
            Ok(()) => Response::Ok,
            Err(e) => err(ErrorCode::Internal, format!("sending {sig} to {id}: {e:#}")),
        }
    }

    fn wait(&self, id: &str) -> Response {
        let mut st = self.lock();
        loop {
            let Some(p) = st.procs.get(id) else {
                return not_found(id);
            };
            if let (Some(code), 0) = (p.exit, p.outputs_open) {
                let oom = p.init && st.container.as_ref().is_some_and(|c| c.oom_killed());
                return Response::Exited {
                    code,
                    oom_killed: oom,
                };
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The host has been sent the exit of process `id`: an exec'd process
    /// is forgotten; for the container's init, the guest may power off.
    fn reported(&self, id: &str) {
        let mut st = self.lock();
        match st.procs.get(id) {
            Some(p) if p.init => st.exit_reported = true,
            Some(_) => {
                st.procs.remove(id);
            }
            None => {}
        }
        self.cv.notify_all();
    }

    /// The standard streams for a new process: what it gets, and what the
    /// agent keeps.
    fn wiring(&self, stdio: &StdioOptions) -> Result<(ProcessIo, Wiring)> {
        let mut io = ProcessIo::default();
        if stdio.tty {
            fs_create(STATE_DIR)?;
            let n = self.console_seq.fetch_add(1, Ordering::SeqCst);
            let path = PathBuf::from(format!("{STATE_DIR}/console-{n}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("binding the console socket {}", path.display()))?;
            io.console_socket = Some(path.clone());
            return Ok((io, Wiring::Tty { listener, path }));
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        io.stdout = Some(out_w);
        io.stderr = Some(err_w);
        let stdin = if stdio.stdin {
            let (r, w) = pipe()?;
            io.stdin = Some(r);
            Some(w)
        } else {
            None
        };
        Ok((
            io,
            Wiring::Pipes {
                stdout: out_r,
                stderr: err_r,
                stdin,
            },
        ))
    }

    /// Starts the threads that move process `id`'s streams over `enc`.
    fn connect_streams(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        id: &str,
        wiring: Wiring,
        stdio: &StdioOptions,
    ) -> Result<()> {
        let (outputs, stdin_fd, master) = match wiring {
            Wiring::Pipes {
                stdout,
                stderr,
                stdin,
            } => (
                vec![(StdStream::Stdout, stdout), (StdStream::Stderr, stderr)],
                stdin,
                None,
            ),
            Wiring::Tty { listener, path } => {
                let m = capsa_shim::monitor::receive_master(&listener);
                let _ = std::fs::remove_file(&path);
                let m = m?;
                if let Some(ws) = stdio.tty_size {
                    let _ = set_winsize(m.as_raw_fd(), ws.rows, ws.cols);
                }
                let input = stdio.stdin.then(|| m.try_clone()).transpose()?;
                (vec![(StdStream::Stdout, m.try_clone()?)], input, Some(m))
            }
        };
        let mut st = self.lock();
        let p = st.procs.get_mut(id).context("the process vanished")?;
        p.conn = conn;
        p.master = master;
        p.outputs_open = outputs.len();
        let mut threads = Vec::new();
        for (stream, fd) in outputs {
            let credit = Arc::new(SendCredit::new(INITIAL_WINDOW));
            p.credits.push((stream, credit.clone()));
            let w = OutboundWriter::new(enc.clone(), credit, id.to_string(), stream);
            threads.push((fd, w));
        }
        if let Some(fd) = stdin_fd {
            let enc2 = enc.clone();
            let pid = id.to_string();
            let (tx, rx) = inbound(INITIAL_WINDOW, move |credit| {
                enc2.send(&Frame::Window {
                    process: pid.clone(),
                    stream: StdStream::Stdin,
                    credit,
                })
                .map_err(io::Error::other)
            });
            p.stdin = Some(tx);
            std::thread::spawn(move || pump_stdin(rx, fd));
        }
        drop(st);
        for (fd, w) in threads {
            let me = Arc::clone(self);
            let id = id.to_string();
            std::thread::spawn(move || {
                pump_output(fd, w);
                let mut st = me.lock();
                if let Some(p) = st.procs.get_mut(&id) {
                    p.outputs_open = p.outputs_open.saturating_sub(1);
                }
                me.cv.notify_all();
            });
        }
        Ok(())
    }
}

enum Wiring {
    Pipes {
        stdout: OwnedFd,
        stderr: OwnedFd,
        stdin: Option<OwnedFd>,
    },
    Tty {
        listener: UnixListener,
        path: PathBuf,
    },
}

fn not_found(id: &str) -> Response {
    err(
        ErrorCode::NotFound,
        format!("no container or process {id:?}"),
    )
}

fn fs_create(dir: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {dir}"))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Copies a process's output to the host until the process closes it; if
/// the host goes away, keeps draining so the process never blocks. Sends
/// the stream's Eof last.
fn pump_output(fd: OwnedFd, mut w: OutboundWriter<UnixStream>) {
    let mut src = File::from(fd);
    let mut buf = vec![0u8; capsa_proto::MAX_DATA];
    let mut host_ok = true;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A terminal reads EIO once its last user closed it.
            Err(_) => break,
        };
        if host_ok && w.write_all(&buf[..n]).is_err() {
            host_ok = false;
        }
    }
    let _ = w.close();
}

/// Copies stdin bytes from the host into the process until the host's Eof,
/// then closes the process's stdin.
fn pump_stdin(mut rx: capsa_proto::InboundReader, fd: OwnedFd) {
    let mut dst = File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    // The process closed its stdin: keep returning credit.
                    let _ = io::copy(&mut rx, &mut io::sink());
                    break;
                }
            }
        }
    }
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The protocol loop on the host, over a socketpair: everything that
    //! needs no container (and so neither PID 1 nor the reaper).

    use super::*;
    use capsa_proto::{encode_frame, Hello, Rootfs, WritableLayer};

    struct Peer {
        enc: Encoder<UnixStream>,
        dec: Decoder<BufReader<UnixStream>>,
        raw: UnixStream,
        server: std::thread::JoinHandle<()>,
    }

    fn connect(agent: &Arc<Agent>) -> (Peer, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let a = Arc::clone(agent);
        let server = std::thread::spawn(move || a.serve(theirs));
        let peer = Peer {
            enc: Encoder::new(ours.try_clone().unwrap()),
            dec: Decoder::new(BufReader::new(ours.try_clone().unwrap())),
            raw: ours.try_clone().unwrap(),
            server,
        };
        (peer, ours)
    }

    fn call(p: &mut Peer, id: u64, request: Request) -> Response {
        p.enc.send(&Frame::Request { id, request }).unwrap();
        match p.dec.recv().unwrap() {
            Frame::Response { id: got, response } => {
                assert_eq!(got, id);
                response
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn code(r: &Response) -> ErrorCode {
        match r {
            Response::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn requests_without_a_container_get_clear_errors_and_bad_frames_do_not_end_the_session() {
        let agent = Agent::new(false);
        let (mut p, _keep) = connect(&agent);
        let hello = handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
        assert_eq!(hello.software_version, crate::SOFTWARE_VERSION);

        let r = call(
            &mut p,
            1,
            Request::Stats {
                container_id: "c".into(),
            },
        );
        assert_eq!(code(&r), ErrorCode::NotFound);
        let r = call(
            &mut p,
            2,
            Request::Signal {
                id: "c".into(),
                signal: 15,
            },
        );
        assert_eq!(code(&r), ErrorCode::NotFound);
        let r = call(
            &mut p,
            3,
            Request::Signal {
                id: "c".into(),
                signal: 999,
            },
        );
        assert_eq!(code(&r), ErrorCode::InvalidRequest);
        let r = call(&mut p, 4, Request::Wait { id: "nope".into() });
        assert_eq!(code(&r), ErrorCode::NotFound);
        let r = call(
            &mut p,
            5,
            Request::ResizeTty {
                id: "c".into(),
                rows: 1,
                cols: 1,
            },
        );
        assert_eq!(code(&r), ErrorCode::NotFound);
        let r = call(
            &mut p,
            6,
            Request::Exec {
                container_id: "c".into(),
                exec_id: "e".into(),
                process: ExecProcess::default(),
                stdio: StdioOptions::default(),
            },
        );
        assert_eq!(code(&r), ErrorCode::NotFound);
        // An id that would escape the agent's state directory.
        let r = call(
            &mut p,
            7,
            Request::Create {
                container_id: "../x".into(),
                spec: Box::default(),
                rootfs: Rootfs {
                    device: "/dev/vda".into(),
                    fstype: "ext4".into(),
                    writable: WritableLayer::Tmpfs {
                        size_bytes: 1 << 20,
                    },
                    volumes: vec![],
                },
                stdio: StdioOptions::default(),
            },
        );
        assert_eq!(code(&r), ErrorCode::InvalidRequest);

        // A request frame whose JSON is broken: an error frame, and the
        // session goes on.
        let mut buf = Vec::new();
        encode_frame(
            &Frame::Request {
                id: 8,
                request: Request::Stats {
                    container_id: "c".into(),
                },
            },
            &mut buf,
        )
        .unwrap();
        let brace = buf.iter().position(|b| *b == b'{').unwrap();
        buf[brace] = b'!';
        p.raw.write_all(&buf).unwrap();
        match p.dec.recv().unwrap() {
            Frame::Error(e) => assert_eq!(e.code, ErrorCode::Malformed),
            Frame::Response { response, .. } => assert_eq!(code(&response), ErrorCode::Malformed),
            other => panic!("expected an error about the bad frame, got {other:?}"),
        }
        // Stdin data for a process that does not exist.
        p.enc
            .send(&Frame::Data {
                process: "ghost".into(),
                stream: StdStream::Stdin,
                data: b"x".to_vec(),
            })
            .unwrap();
        match p.dec.recv().unwrap() {
            Frame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
            other => panic!("expected an error, got {other:?}"),
        }
        let r = call(
            &mut p,
            9,
            Request::Stats {
                container_id: "c".into(),
            },
        );
        assert_eq!(code(&r), ErrorCode::NotFound, "still answering");

        // Shutdown is answered and asks for the power-off.
        assert_eq!(call(&mut p, 10, Request::Shutdown), Response::Ok);
        let why = agent.wait_for_poweroff(None);
        assert!(why.contains("shutdown"), "{why}");
        p.raw.shutdown(std::net::Shutdown::Both).unwrap();
        p.server.join().unwrap();
        assert!(agent.lock().conns.is_empty(), "connection forgotten");
    }

    #[test]
    fn a_peer_with_another_protocol_version_is_refused() {
        let agent = Agent::new(false);
        let (mut p, _keep) = connect(&agent);
        p.enc
            .send(&Frame::Hello(Hello {
                protocol_version: capsa_proto::PROTOCOL_VERSION + 1,
                software_version: "capsa 9".into(),
            }))
            .unwrap();
        assert!(matches!(p.dec.recv().unwrap(), Frame::Hello(_)));
        match p.dec.recv().unwrap() {
            Frame::Error(e) => assert_eq!(e.code, ErrorCode::VersionMismatch),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The agent closes the connection and does not count it.
        p.server.join().unwrap();
        assert!(agent.lock().conns.is_empty());
    }

    #[test]
    fn no_container_within_the_create_timeout_powers_off() {
        let agent = Agent::new(false);
        let why = agent.wait_for_poweroff(Some(Duration::from_millis(100)));
        assert!(why.contains("no container was created"), "{why}");
    }
}
