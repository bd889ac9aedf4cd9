//! The agent's side of capsa-proto: one thread per host connection, reading
//! frames and answering requests, plus threads that move each process's
//! standard streams with flow control.
//!
//! A guest holds one or more containers (the containers of one pod share
//! its microVM); the first one created is the sandbox's, and its exit ends
//! the guest. Every process (a container's init, named by the container id,
//! and each exec'd process, named by its exec id) belongs to the connection
//! that created it: its output goes there. If that connection closes, its
//! output is drained and dropped, so the process never blocks on a full
//! pipe.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capsa_container::terminal::{receive_master, set_window_size};
use capsa_container::{ExecRequest, ProcessIo};
use capsa_proto::{
    handshake, inbound, Decoder, Encoder, ErrorCode, ErrorReply, ExecProcess, Frame, InboundSender,
    OutboundWriter, ProtoError, Request, Response, SendCredit, SharedEncoder, StdStream,
    StdioOptions, WinSize, INITIAL_WINDOW,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::container::{Container, STATE_DIR};
use crate::reaper::Reaper;

type Conn = SharedEncoder<UnixStream>;

/// What the agent asks of a container: a [`Container`] in the guest, a
/// stand-in in the unit tests (which run neither as PID 1 nor as root).
pub trait Managed: Send {
    fn start(&mut self) -> Result<()>;
    /// Signals the container's init.
    fn kill(&self, sig: Signal) -> Result<()>;
    /// Starts another process in the container; returns its PID.
    fn exec(&self, req: &ExecRequest, io: ProcessIo) -> Result<i32>;
    fn oom_killed(&self) -> bool;
    fn stats(&self) -> capsa_proto::Stats;
    /// Kills what is left and releases the container. Idempotent.
    fn destroy(&mut self);
    /// After `destroy`: removes its state so its id can be created again.
    fn remove_state(&mut self);
}

impl Managed for Container {
    fn start(&mut self) -> Result<()> {
        Container::start(self)
    }
    fn kill(&self, sig: Signal) -> Result<()> {
        Container::kill(self, sig)
    }
    fn exec(&self, req: &ExecRequest, io: ProcessIo) -> Result<i32> {
        Container::exec(self, req, io)
    }
    fn oom_killed(&self) -> bool {
        Container::oom_killed(self)
    }
    fn stats(&self) -> capsa_proto::Stats {
        crate::container::stats(&self.cgroup_dir())
    }
    fn destroy(&mut self) {
        Container::destroy(self)
    }
    fn remove_state(&mut self) {
        Container::remove_state(self)
    }
}

/// Creates a container (its init waiting for `start`), calling `register`
/// with the init's PID before anything can reap it.
type Maker = dyn Fn(&str, Spec, &capsa_proto::Rootfs, ProcessIo, &mut dyn FnMut(i32)) -> Result<Box<dyn Managed>>
    + Send
    + Sync;

/// One process the agent runs (a container's init or an exec'd one).
struct Proc {
    pid: i32,
    init: bool,
    /// The container it runs in (its own id for an init).
    container: String,
    /// Tells this process from an earlier one of the same id (a deleted
    /// container's), whose output threads may still be finishing.
    serial: u64,
    exit: Option<i32>,
    /// The host has been sent the exit (init processes only; an exec'd
    /// process is forgotten then).
    reported: bool,
    /// Output streams whose Eof has not been sent yet.
    outputs_open: usize,
    master: Option<OwnedFd>,
    stdin: Option<InboundSender>,
    credits: Vec<(StdStream, Arc<SendCredit>)>,
    conn: u64,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Box<dyn Managed>>,
    /// Container ids being created or deleted: reserved, but not usable.
    busy: HashSet<String>,
    /// The first container created in this guest, the sandbox's: the
    /// guest lives as long as it does.
    first: Option<String>,
    procs: HashMap<String, Proc>,
    /// Live connections: a handle to shut each down at power-off.
    conns: HashMap<u64, UnixStream>,
    poweroff: Option<String>,
}

/// The agent's shared state.
pub struct Agent {
    state: Mutex<State>,
    cv: Condvar,
    reaper: OnceLock<Arc<Reaper>>,
    next_conn: AtomicU64,
    console_seq: AtomicU64,
    next_serial: AtomicU64,
    make: Box<Maker>,
    debug: bool,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, msg))
}

impl Agent {
    pub fn new(debug: bool) -> Arc<Agent> {
        Self::with_maker(
            debug,
            Box::new(
                |id: &str,
                 spec: Spec,
                 rootfs: &capsa_proto::Rootfs,
                 io: ProcessIo,
                 register: &mut dyn FnMut(i32)| {
                    let (c, _pid) = Container::create(id, spec, rootfs, io, &mut *register)?;
                    Ok(Box::new(c) as Box<dyn Managed>)
                },
            ),
        )
    }

    fn with_maker(debug: bool, make: Box<Maker>) -> Arc<Agent> {
        Arc::new(Agent {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            reaper: OnceLock::new(),
            next_conn: AtomicU64::new(1),
            console_seq: AtomicU64::new(1),
            next_serial: AtomicU64::new(1),
            make,
            debug,
        })
    }

    /// Holds off the reaper while this side forks and waits (see
    /// [`Reaper::ops`]); nothing to hold before the reaper runs.
    fn ops(&self) -> Option<MutexGuard<'_, ()>> {
        self.reaper.get().map(|r| r.ops())
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

    /// A signal PID 1 received goes to every container whose init runs.
    fn forward(&self, sig: Signal) {
        let st = self.lock();
        for (id, c) in &st.containers {
            if st.procs.get(id).is_some_and(|p| p.exit.is_none()) {
                let _ = c.kill(sig);
            }
        }
    }

    /// Asks for the guest to be powered off.
    pub fn request_poweroff(&self, why: impl Into<String>) {
        let mut st = self.lock();
        st.poweroff.get_or_insert_with(|| why.into());
        self.cv.notify_all();
    }

    /// Blocks until the guest should power off; returns why. That is: on
    /// request (`Shutdown`), once the init of the first container created
    /// (the sandbox's) has exited and the host has been told (or no host is
    /// connected to tell), or when no container was created within
    /// `create_timeout` of the call. Other containers' exits do not count.
    pub fn wait_for_poweroff(&self, create_timeout: Option<Duration>) -> String {
        let start = Instant::now();
        let mut st = self.lock();
        loop {
            if let Some(why) = poweroff_due(&st, start, create_timeout) {
                return why;
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
        let containers = {
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
            std::mem::take(&mut st.containers)
        };
        let _ops = self.ops();
        for (_, mut c) in containers {
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
                match st.containers.get_mut(&container_id) {
                    Some(c) => match c.start() {
                        Ok(()) => Response::Ok,
                        Err(e) => err(ErrorCode::InvalidState, format!("{e:#}")),
                    },
                    None => not_found(&container_id),
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
                    }) => match set_window_size(m, WinSize { rows, cols }) {
                        Ok(()) => Response::Ok,
                        Err(e) => err(ErrorCode::Internal, format!("resizing the terminal: {e}")),
                    },
                }
            }
            Request::Stats { container_id } => {
                let st = self.lock();
                match st.containers.get(&container_id) {
                    Some(c) => Response::Stats(c.stats()),
                    None => not_found(&container_id),
                }
            }
            Request::Shutdown => {
                self.request_poweroff("the host asked for a shutdown");
                Response::Ok
            }
            Request::Delete { container_id } => self.delete(&container_id),
        })
    }

    /// A pod's members share some of its sandbox's namespaces (network,
    /// IPC, UTS). The host names them `container:ID` — paths on the host
    /// mean nothing here — and they become the namespaces of container
    /// ID's first process in this guest.
    fn pod_namespaces(&self, mut spec: Spec) -> Result<Spec> {
        use oci_spec::runtime::LinuxNamespaceType as T;
        let Some(linux) = spec.linux_mut() else {
            return Ok(spec);
        };
        let Some(mut namespaces) = linux.namespaces().clone() else {
            return Ok(spec);
        };
        for ns in namespaces.iter_mut() {
            let Some(owner) = ns
                .path()
                .as_ref()
                .and_then(|p| p.to_str())
                .and_then(|p| p.strip_prefix("container:"))
                .map(str::to_string)
            else {
                continue;
            };
            let pid = {
                let st = self.lock();
                st.procs
                    .get(&owner)
                    .filter(|p| p.init && p.exit.is_none())
                    .map(|p| p.pid)
            }
            .with_context(|| {
                format!("container {owner}, whose namespaces this one joins, is not running in this guest")
            })?;
            let file = match ns.typ() {
                T::Network => "net",
                T::Ipc => "ipc",
                T::Uts => "uts",
                T::Pid => "pid",
                other => anyhow::bail!(
                    "joining another container's {other:?} namespace is not supported"
                ),
            };
            ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{file}"))));
        }
        linux.set_namespaces(Some(namespaces));
        Ok(spec)
    }

    fn create(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        id: String,
        spec: Spec,
        rootfs: capsa_proto::Rootfs,
        stdio: StdioOptions,
    ) -> Response {
        if let Err(e) = crate::container::check_id(&id) {
            return err(ErrorCode::InvalidRequest, format!("{e:#}"));
        }
        {
            let mut st = self.lock();
            if st.containers.contains_key(&id) || st.busy.contains(&id) {
                return err(
                    ErrorCode::AlreadyExists,
                    format!("container {id} exists already in this guest"),
                );
            }
            if st.procs.contains_key(&id) {
                return err(
                    ErrorCode::AlreadyExists,
                    format!("a process named {id:?} exists already in this guest"),
                );
            }
            st.busy.insert(id.clone());
        }
        let mut made: Option<Box<dyn Managed>> = None;
        let result = (|| -> Result<()> {
            let spec = self.pod_namespaces(spec)?;
            let (io, wiring) = self.wiring(&stdio)?;
            let ops = self.ops();
            let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
            let mut register = |pid: i32| {
                self.lock()
                    .procs
                    .insert(id.clone(), Proc::new(pid, &id, serial, true, conn));
            };
            made = Some((self.make)(&id, spec, &rootfs, io, &mut register)?);
            drop(ops);
            self.connect_streams(conn, enc, &id, wiring, &stdio)
        })();
        let failed = match (result, made) {
            (Ok(()), Some(c)) => {
                let mut st = self.lock();
                st.containers.insert(id.clone(), c);
                st.first.get_or_insert_with(|| id.clone());
                None
            }
            (Ok(()), None) => Some(anyhow::anyhow!("the container was not made")),
            (Err(e), made) => {
                if let Some(mut c) = made {
                    let _ops = self.ops();
                    c.destroy();
                    c.remove_state();
                }
                Some(e)
            }
        };
        let mut st = self.lock();
        st.busy.remove(&id);
        self.cv.notify_all();
        match failed {
            None => Response::Ok,
            Some(e) => {
                st.procs.remove(&id);
                err(ErrorCode::Internal, format!("{e:#}"))
            }
        }
    }

    /// Removes a container whose processes have all exited; kills nothing.
    fn delete(&self, id: &str) -> Response {
        let mut st = self.lock();
        if st.busy.contains(id) {
            return err(
                ErrorCode::InvalidState,
                format!("container {id} is being created or deleted"),
            );
        }
        if !st.containers.contains_key(id) {
            return not_found(id);
        }
        let mut running: Vec<&str> = st
            .procs
            .iter()
            .filter(|(_, p)| p.container == id && p.exit.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        running.sort_by_key(|name| *name != id);
        if let Some(first) = running.first() {
            let what = if *first == id {
                format!("container {id} is still running")
            } else {
                format!("process {first} of container {id} is still running")
            };
            return err(
                ErrorCode::InvalidState,
                format!("{what}: signal it and wait for its exit before deleting"),
            );
        }
        let code = st.procs.get(id).and_then(|p| p.exit).unwrap_or(-1);
        let names: Vec<String> = st
            .procs
            .iter()
            .filter(|(_, p)| p.container == id)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            if let Some(mut p) = st.procs.remove(&name) {
                for (_, c) in &p.credits {
                    c.close();
                }
                p.stdin = None;
            }
        }
        let mut c = st.containers.remove(id).expect("checked above");
        st.busy.insert(id.to_string());
        if st.first.as_deref() == Some(id) {
            // The host knows it exited: the sandbox is over.
            st.poweroff.get_or_insert_with(|| {
                format!("the container exited with code {code} and was deleted")
            });
        }
        drop(st);
        {
            let _ops = self.ops();
            c.destroy();
            c.remove_state();
        }
        let mut st = self.lock();
        st.busy.remove(id);
        self.cv.notify_all();
        Response::Ok
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
            if !st.containers.contains_key(&container_id) {
                return not_found(&container_id);
            }
            if st.procs.contains_key(&exec_id)
                || st.containers.contains_key(&exec_id)
                || st.busy.contains(&exec_id)
            {
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
            let ops = self.ops();
            let mut st = self.lock();
            let c = st
                .containers
                .get(&container_id)
                .context("the container is gone")?;
            let pid = c.exec(&req, io)?;
            let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
            st.procs.insert(
                exec_id.clone(),
                Proc::new(pid, &container_id, serial, false, conn),
            );
            drop(st);
            drop(ops);
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
        let r = match st.containers.get(&p.container) {
            Some(c) if p.init => c.kill(sig),
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
                let oom = p.init
                    && st
                        .containers
                        .get(&p.container)
                        .is_some_and(|c| c.oom_killed());
                return Response::Exited {
                    code,
                    oom_killed: oom,
                };
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The host has been sent the exit of process `id`: an exec'd process
    /// is forgotten; for the sandbox container's init, the guest may power
    /// off.
    fn reported(&self, id: &str) {
        let mut st = self.lock();
        match st.procs.get_mut(id) {
            Some(p) if p.init => p.reported = true,
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
                let m = receive_master(&listener);
                let _ = std::fs::remove_file(&path);
                let m = m?;
                if let Some(ws) = stdio.tty_size {
                    let _ = set_window_size(&m, ws);
                }
                let input = stdio.stdin.then(|| m.try_clone()).transpose()?;
                (vec![(StdStream::Stdout, m.try_clone()?)], input, Some(m))
            }
        };
        let mut st = self.lock();
        let p = st.procs.get_mut(id).context("the process vanished")?;
        let serial = p.serial;
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
                if let Some(p) = st.procs.get_mut(&id).filter(|p| p.serial == serial) {
                    p.outputs_open = p.outputs_open.saturating_sub(1);
                }
                me.cv.notify_all();
            });
        }
        Ok(())
    }
}

impl Proc {
    fn new(pid: i32, container: &str, serial: u64, init: bool, conn: u64) -> Proc {
        Proc {
            pid,
            init,
            container: container.to_string(),
            serial,
            exit: None,
            reported: false,
            outputs_open: 0,
            master: None,
            stdin: None,
            credits: Vec::new(),
            conn,
        }
    }
}

/// Why the guest should power off now, if it should (see
/// [`Agent::wait_for_poweroff`]).
fn poweroff_due(st: &State, start: Instant, create_timeout: Option<Duration>) -> Option<String> {
    if let Some(why) = &st.poweroff {
        return Some(why.clone());
    }
    if let Some(first) = &st.first {
        let init = st.procs.get(first);
        let done = init.is_none_or(|p| p.exit.is_some() && p.outputs_open == 0);
        let reported = init.is_some_and(|p| p.reported);
        if done && (reported || st.conns.is_empty()) {
            let code = init.and_then(|p| p.exit).unwrap_or(-1);
            return Some(format!("the container exited with code {code}"));
        }
    } else if let Some(t) = create_timeout {
        if st.busy.is_empty() && start.elapsed() >= t {
            return Some(format!(
                "no container was created within {}s of boot (is the host connected to vsock port {}?)",
                t.as_secs(),
                capsa_proto::AGENT_PORT
            ));
        }
    }
    None
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

    /// Sends a request and returns its response, skipping the `Eof`s of
    /// processes' streams on the way.
    fn call(p: &mut Peer, id: u64, request: Request) -> Response {
        p.enc.send(&Frame::Request { id, request }).unwrap();
        loop {
            match p.dec.recv().unwrap() {
                Frame::Response { id: got, response } => {
                    assert_eq!(got, id);
                    return response;
                }
                Frame::Eof { .. } => {}
                other => panic!("expected a response, got {other:?}"),
            }
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

    /// What the stand-in containers were asked to do.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A container that is only bookkeeping: it logs what it is asked.
    struct Fake {
        id: String,
        log: Log,
    }

    impl Managed for Fake {
        fn start(&mut self) -> Result<()> {
            self.log.lock().unwrap().push(format!("start {}", self.id));
            Ok(())
        }
        fn kill(&self, sig: Signal) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("kill {} {sig}", self.id));
            Ok(())
        }
        fn exec(&self, _req: &ExecRequest, _io: ProcessIo) -> Result<i32> {
            Ok(next_fake_pid())
        }
        fn oom_killed(&self) -> bool {
            false
        }
        fn stats(&self) -> capsa_proto::Stats {
            capsa_proto::Stats::default()
        }
        fn destroy(&mut self) {
            self.log
                .lock()
                .unwrap()
                .push(format!("destroy {}", self.id));
        }
        fn remove_state(&mut self) {
            self.log.lock().unwrap().push(format!("remove {}", self.id));
        }
    }

    /// PIDs above Linux's PID_MAX_LIMIT (2^22): no real process has one,
    /// so teardown's SIGKILL to them reaches nobody.
    fn next_fake_pid() -> i32 {
        static NEXT: AtomicU64 = AtomicU64::new(5_000_000);
        NEXT.fetch_add(1, Ordering::SeqCst) as i32
    }

    /// An agent whose containers are [`Fake`]s; their stdio is closed at
    /// once, as by a process that wrote nothing.
    fn fake_agent() -> (Arc<Agent>, Log) {
        let log = Log::default();
        let l = log.clone();
        let agent = Agent::with_maker(
            false,
            Box::new(
                move |id: &str,
                      _spec: Spec,
                      _rootfs: &Rootfs,
                      io: ProcessIo,
                      register: &mut dyn FnMut(i32)| {
                    drop(io);
                    register(next_fake_pid());
                    Ok(Box::new(Fake {
                        id: id.to_string(),
                        log: l.clone(),
                    }) as Box<dyn Managed>)
                },
            ),
        );
        (agent, log)
    }

    fn create(id: &str) -> Request {
        Request::Create {
            container_id: id.into(),
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
        }
    }

    fn pid_of(agent: &Agent, id: &str) -> i32 {
        agent.lock().procs[id].pid
    }

    /// Waits until the host has been sent `id`'s exit (the agent notes it
    /// after the reply is written).
    fn until_reported(agent: &Agent, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.lock().procs.get(id).is_some_and(|p| p.reported) {
            assert!(Instant::now() < deadline, "{id}'s exit never noted");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn due(agent: &Agent) -> Option<String> {
        poweroff_due(&agent.lock(), Instant::now(), None)
    }

    #[test]
    fn several_containers_share_the_guest_and_only_the_first_ends_it() {
        let (agent, log) = fake_agent();
        let (mut p, _keep) = connect(&agent);
        handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();

        assert_eq!(call(&mut p, 1, create("c1")), Response::Ok);
        let r = call(&mut p, 2, create("c1"));
        assert_eq!(code(&r), ErrorCode::AlreadyExists, "same id twice");
        assert_eq!(
            call(&mut p, 3, create("c2")),
            Response::Ok,
            "a second container"
        );
        for (rid, id) in [(4, "c1"), (5, "c2")] {
            let start = Request::Start {
                container_id: id.into(),
            };
            assert_eq!(call(&mut p, rid, start), Response::Ok);
        }
        let stats = Request::Stats {
            container_id: "c2".into(),
        };
        assert!(matches!(call(&mut p, 6, stats), Response::Stats(_)));

        // Requests address the container they name.
        let sig = Request::Signal {
            id: "c2".into(),
            signal: 15,
        };
        assert_eq!(call(&mut p, 7, sig), Response::Ok);
        assert_eq!(log.lock().unwrap().last().unwrap(), "kill c2 SIGTERM");
        // A signal to PID 1 goes to every running container.
        log.lock().unwrap().clear();
        agent.forward(Signal::SIGHUP);
        let mut got = log.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, ["kill c1 SIGHUP", "kill c2 SIGHUP"]);
        log.lock().unwrap().clear();

        // An exec in c2 keeps it from being deleted after its init exits.
        let exec = Request::Exec {
            container_id: "c2".into(),
            exec_id: "e1".into(),
            process: ExecProcess::default(),
            stdio: StdioOptions::default(),
        };
        assert_eq!(call(&mut p, 8, exec), Response::Ok);
        let delete = |id: &str| Request::Delete {
            container_id: id.into(),
        };
        let r = call(&mut p, 9, delete("c2"));
        assert_eq!(code(&r), ErrorCode::InvalidState, "c2 still runs: {r:?}");
        assert_eq!(code(&call(&mut p, 10, delete("nope"))), ErrorCode::NotFound);

        agent.exited(pid_of(&agent, "c2"), 6);
        let wait = Request::Wait { id: "c2".into() };
        assert_eq!(
            call(&mut p, 11, wait),
            Response::Exited {
                code: 6,
                oom_killed: false
            }
        );
        until_reported(&agent, "c2");
        assert_eq!(
            due(&agent),
            None,
            "the second container's exit does not end the guest"
        );
        match call(&mut p, 12, delete("c2")) {
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::InvalidState);
                assert!(e.message.contains("e1"), "{e}");
            }
            other => panic!("delete with a live exec answered {other:?}"),
        }
        agent.exited(pid_of(&agent, "e1"), 0);
        assert!(!log.lock().unwrap().iter().any(|l| l.starts_with("kill")));
        assert_eq!(call(&mut p, 13, delete("c2")), Response::Ok);
        {
            let l = log.lock().unwrap();
            assert_eq!(l[l.len() - 2..], ["destroy c2", "remove c2"]);
            let st = agent.lock();
            assert!(!st.procs.contains_key("c2") && !st.procs.contains_key("e1"));
            assert!(st.poweroff.is_none());
        }
        assert_eq!(code(&call(&mut p, 14, delete("c2"))), ErrorCode::NotFound);
        let wait = Request::Wait { id: "c2".into() };
        assert_eq!(code(&call(&mut p, 15, wait)), ErrorCode::NotFound);
        // The id can be created again.
        assert_eq!(call(&mut p, 16, create("c2")), Response::Ok);
        let start = Request::Start {
            container_id: "c2".into(),
        };
        assert_eq!(call(&mut p, 17, start), Response::Ok);

        // The first container (the sandbox's) exits: not before the host
        // has been told, and then the guest powers off.
        let r = call(&mut p, 18, delete("c1"));
        assert_eq!(code(&r), ErrorCode::InvalidState, "c1 still runs");
        agent.exited(pid_of(&agent, "c1"), 0);
        assert_eq!(due(&agent), None, "the host is connected and not told yet");
        let wait = Request::Wait { id: "c1".into() };
        assert_eq!(
            call(&mut p, 19, wait),
            Response::Exited {
                code: 0,
                oom_killed: false
            }
        );
        let why = agent.wait_for_poweroff(None);
        assert_eq!(why, "the container exited with code 0");

        // Power-off ends the containers still there.
        p.raw.shutdown(std::net::Shutdown::Both).unwrap();
        p.server.join().unwrap();
        log.lock().unwrap().clear();
        agent.teardown(Duration::ZERO);
        let mut got = log.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, ["destroy c1", "destroy c2"]);
        assert!(agent.lock().containers.is_empty());
    }

    #[test]
    fn the_first_container_ends_the_guest_once_reported_deleted_or_unwatched() {
        // Deleting the sandbox's container means the host knows it exited.
        let (agent, _log) = fake_agent();
        let (mut p, _keep) = connect(&agent);
        handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
        assert_eq!(call(&mut p, 1, create("sandbox")), Response::Ok);
        assert_eq!(call(&mut p, 2, create("app")), Response::Ok);
        agent.exited(pid_of(&agent, "sandbox"), 137);
        assert_eq!(due(&agent), None);
        let delete = Request::Delete {
            container_id: "sandbox".into(),
        };
        assert_eq!(call(&mut p, 3, delete), Response::Ok);
        let why = due(&agent).expect("powering off");
        assert!(why.contains("137"), "{why}");

        // With no host connected, the first container's exit is enough; a
        // later container's is not.
        let (agent, _log) = fake_agent();
        let (mut p, _keep) = connect(&agent);
        handshake(&mut p.enc, &mut p.dec, "test-host").unwrap();
        assert_eq!(call(&mut p, 1, create("sandbox")), Response::Ok);
        assert_eq!(call(&mut p, 2, create("app")), Response::Ok);
        p.raw.shutdown(std::net::Shutdown::Both).unwrap();
        p.server.join().unwrap();
        agent.exited(pid_of(&agent, "app"), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(due(&agent), None);
        agent.exited(pid_of(&agent, "sandbox"), 3);
        let why = agent.wait_for_poweroff(Some(Duration::ZERO));
        assert_eq!(why, "the container exited with code 3");
    }
}
