//! The process table: every process the agent runs (a container's init or
//! an exec'd one), its exit as the reaper reports it, and the requests that
//! address a process — `Exec`, `Signal`, `Wait`, `ResizeTty`.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use capsa_container::terminal::set_window_size;
use capsa_container::{ExecRequest, ProcessIo};
use capsa_proto::{
    ErrorCode, ExecProcess, InboundSender, Response, SendCredit, StdStream, StdioOptions, WinSize,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{err, not_found, Agent, Conn};

/// One process the agent runs (a container's init or an exec'd one).
pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) init: bool,
    /// The container it runs in (its own id for an init).
    pub(super) container: String,
    /// Tells this process from an earlier one of the same id (a deleted
    /// container's), whose output threads may still be finishing.
    pub(super) serial: u64,
    pub(super) exit: Option<i32>,
    /// The host has been sent the exit (init processes only; an exec'd
    /// process is forgotten then).
    pub(super) reported: bool,
    /// Output streams whose Eof has not been sent yet.
    pub(super) outputs_open: usize,
    pub(super) master: Option<OwnedFd>,
    pub(super) stdin: Option<InboundSender>,
    pub(super) credits: Vec<(StdStream, Arc<SendCredit>)>,
    pub(super) conn: u64,
}

impl Proc {
    pub(super) fn new(pid: i32, container: &str, serial: u64, init: bool, conn: u64) -> Proc {
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

impl super::State {
    /// Drops every exec'd process that has exited, whose output is drained
    /// and whose connection is gone: nobody can wait for it any more (an
    /// `exec -d` process, or one whose host side died). Its id is free
    /// again and the table does not grow with the guest's uptime.
    pub(super) fn forget_orphans(&mut self) {
        let conns = &self.conns;
        self.procs.retain(|_, p| {
            p.init || p.exit.is_none() || p.outputs_open > 0 || conns.contains_key(&p.conn)
        });
    }
}

impl Agent {
    pub(super) fn exited(&self, pid: i32, code: i32) {
        let mut st = self.lock();
        for p in st.procs.values_mut() {
            if p.pid == pid && p.exit.is_none() {
                p.exit = Some(code);
                // The process is gone: nothing will read its stdin now.
                p.stdin = None;
            }
        }
        st.forget_orphans();
        self.cv.notify_all();
    }

    pub(super) fn exec(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        container_id: String,
        exec_id: String,
        process: ExecProcess,
        stdio: StdioOptions,
    ) -> Response {
        let exited = self
            .lock()
            .procs
            .get(&container_id)
            .is_some_and(|p| p.exit.is_some());
        if exited {
            return err(
                ErrorCode::InvalidState,
                format!("container {container_id} is not running"),
            );
        }
        let req = ExecRequest {
            args: process.args,
            env: process.env,
            workdir: process.cwd,
            user: process.user.map(|u| (u.uid, u.gid)),
            tty: stdio.tty,
            sub_cgroup: process.cgroup,
        };
        self.launch(conn, enc, container_id, exec_id, stdio, |c, io| {
            c.exec(&req, io)
        })
    }

    /// `Diff`: the container's writable layer as a tar, from a process of
    /// the agent's own (see [`crate::container::Container::diff`]).
    pub(super) fn diff(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        container_id: String,
        exec_id: String,
    ) -> Response {
        let stdio = StdioOptions::default();
        // An exited container's layer is still there (a guest held up
        // for `capsa build` reads it after the RUN step's exit).
        self.launch(conn, enc, container_id, exec_id, stdio, |c, io| c.diff(io))
    }

    /// Starts process `exec_id` of a container with `start`, wired
    /// as `stdio` says, for `Wait` and the stream frames.
    fn launch(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        container_id: String,
        exec_id: String,
        stdio: StdioOptions,
        start: impl FnOnce(&dyn super::pods::Managed, ProcessIo) -> Result<i32>,
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
        }
        // `Some(pid)` once the process runs: a failure after that must not
        // leave it running with nobody to wait for it.
        let mut started = None;
        let result = (|| -> Result<Option<Response>> {
            let (io, wiring) = self.wiring(&stdio)?;
            let ops = self.ops();
            let mut st = self.lock();
            // Checked again under the lock the insert is made under: two
            // connections may ask for the same exec id at once.
            if st.procs.contains_key(&exec_id) {
                return Ok(Some(err(
                    ErrorCode::AlreadyExists,
                    format!("a process named {exec_id:?} exists already"),
                )));
            }
            let c = st
                .containers
                .get(&container_id)
                .context("the container is gone")?;
            let pid = start(c.as_ref(), io)?;
            started = Some(pid);
            let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
            st.procs.insert(
                exec_id.clone(),
                Proc::new(pid, &container_id, serial, false, conn),
            );
            drop(st);
            drop(ops);
            self.connect_streams(conn, enc, &exec_id, wiring, &stdio)?;
            Ok(None)
        })();
        match result {
            Ok(None) => Response::Ok,
            Ok(Some(refused)) => refused,
            Err(e) => {
                if let Some(pid) = started {
                    // The reaper collects it; its id is free again.
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    self.lock().procs.remove(&exec_id);
                }
                err(ErrorCode::Internal, format!("{e:#}"))
            }
        }
    }

    pub(super) fn signal(&self, id: &str, signal: i32) -> Response {
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
            // An exec'd process leads a process group (it ran setsid):
            // the signal reaches what it started too (a timed-out
            // healthcheck's `sh -c` and its children).
            _ => nix::sys::signal::killpg(Pid::from_raw(p.pid), sig)
                .or_else(|_| nix::sys::signal::kill(Pid::from_raw(p.pid), sig))
                .map_err(Into::into),
        };
        match r {
            Ok(()) => Response::Ok,
            Err(e) => err(ErrorCode::Internal, format!("sending {sig} to {id}: {e:#}")),
        }
    }

    pub(super) fn wait(&self, id: &str) -> Response {
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
    pub(super) fn reported(&self, id: &str) {
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

    /// `ResizeTty`: sets the window size of the process's terminal.
    pub(super) fn resize_tty(&self, id: &str, rows: u16, cols: u16) -> Response {
        let st = self.lock();
        match st.procs.get(id) {
            None => not_found(id),
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
}
