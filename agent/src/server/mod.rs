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
//! pipe. An exec'd process is forgotten once its exit has been reported
//! through `Wait`, or once it has exited with its connection gone (docker's
//! `exec -d`): the table holds only what someone can still ask about.
//!
//! # How a connection is served
//!
//! `main` makes one [`Agent`] ([`Agent::new`]), starts the zombie reaper
//! ([`Agent::start_reaper`]: exits land in the process table, signals to
//! PID 1 go to the containers) and hands every accepted vsock connection to
//! [`Agent::serve`] on a thread of its own, then blocks in
//! [`Agent::wait_for_poweroff`] and ends with [`Agent::teardown`].
//!
//! `serve` (`connection.rs`) does the protocol handshake, then reads frames
//! until the host closes: each request goes to `Agent::handle`
//! (`dispatch.rs`), which answers at once — except `Wait`, answered from a
//! thread of its own once the process has exited and its output is
//! drained. Stdin data, stdin Eof and output window updates go to the
//! process they name. A new process's stdio is wired before it starts
//! (`stdio.rs`); once it runs, pump threads move its output to the
//! connection that created it, and the host's stdin into it. When the
//! connection closes, its processes' output is drained and dropped and
//! their stdin fails.
//!
//! # Files
//!
//! - `mod.rs`: [`Agent`], its shared `State`, construction and the reaper.
//! - `connection.rs`: the per-connection frame loop ([`Agent::serve`]).
//! - `dispatch.rs`: `Request` → handler, one arm per verb.
//! - `pods.rs`: the containers the guest holds ([`Managed`]): create,
//!   start, stats, delete, signal forwarding.
//! - `processes.rs`: the process table (`Proc`): exits, exec, signals,
//!   waits, terminal resize.
//! - `stdio.rs`: stdio wiring and the output/stdin pumps.
//! - `poweroff.rs`: when the guest ends ([`Agent::wait_for_poweroff`]) and
//!   the teardown before it.
//! - `tests.rs`: the protocol loop over a socketpair, with stand-in
//!   containers.
//!
//! Each file extends [`Agent`] with an `impl Agent` block over the one
//! shared `State`, taken with `Agent::lock`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use capsa_container::ProcessIo;
use capsa_proto::{ErrorCode, ErrorReply, Response, SharedEncoder};
use oci_spec::runtime::Spec;

use crate::container::Container;
use crate::reaper::Reaper;

mod connection;
mod dispatch;
mod pods;
mod poweroff;
mod processes;
mod stdio;
#[cfg(test)]
mod tests;

use pods::Maker;
pub use pods::Managed;
use processes::Proc;

type Conn = SharedEncoder<UnixStream>;

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
    /// The host asked the guest to outlive the first container's exit
    /// (`Create`'s `hold_after_exit`) until it says `Shutdown`.
    hold: bool,
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

fn not_found(id: &str) -> Response {
    err(
        ErrorCode::NotFound,
        format!("no container or process {id:?}"),
    )
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
}
