//! The monitor of a container made from an engine's bundle (runc's
//! `create` and `exec`, the containerd shim). In VM mode it boots the VM,
//! holds the connection to the guest agent, passes the standard streams
//! through and exits with the container's (or exec'd process's) exit
//! status, as runc's container process would. In container mode it only
//! runs a libcontainer operation for a multi-threaded caller and reports
//! the PID.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Result;
use chrono::Utc;
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::ready::Ready;
use crate::backend::{Backend, ExecRequest, ProcessIo};
use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::with_record;
use crate::record::{Record, Status};

/// What the monitor of container `id` does, with which standard streams.
#[derive(Serialize, Deserialize)]
pub struct BundleJob {
    lib: PathBuf,
    run: PathBuf,
    id: String,
    stdin: bool,
    console_socket: Option<PathBuf>,
    op: BundleOp,
}

#[derive(Serialize, Deserialize)]
pub enum BundleOp {
    /// VM mode: boot the created container's VM and run it to its end.
    Run,
    /// VM mode: run a process in the running container, to its end.
    /// With runc's `exec --cgroup` sub-cgroup (of the container's, in the
    /// guest).
    VmExec(Box<Process>, Option<String>),
    /// Container mode from a multi-threaded caller: libcontainer clones the
    /// calling process without exec and goes on running Rust code in the
    /// child, where a lock another thread held stays held forever. runc
    /// re-executes itself; capsa runs the operation in this fresh,
    /// single-threaded process and reports the PID.
    NamespaceCreate(PathBuf),
    NamespaceExec(Box<Process>),
}

impl BundleJob {
    pub fn new(roots: &Roots, id: &str, io: &ProcessIo, op: BundleOp) -> BundleJob {
        BundleJob {
            lib: roots.lib.clone(),
            run: roots.run.clone(),
            id: id.to_string(),
            stdin: io.stdin.is_some(),
            console_socket: io.console_socket.clone(),
            op,
        }
    }
}

/// The monitor's work (see the module docs); `ready` gets its [`Ready`].
pub fn run(job: BundleJob, mut ready: File) -> Result<i32> {
    let roots = Roots {
        lib: job.lib,
        run: job.run,
    };
    // With a terminal the output goes to it: a stdout route would replace
    // the terminal's (the agent connection keeps one sink per stream).
    let tty = job.console_socket.is_some();
    let io = ProcessIo {
        stdin: job
            .stdin
            .then(|| std::io::stdin().as_fd().try_clone_to_owned())
            .transpose()?,
        stdout: (!tty)
            .then(|| std::io::stdout().as_fd().try_clone_to_owned())
            .transpose()?,
        stderr: (!tty)
            .then(|| std::io::stderr().as_fd().try_clone_to_owned())
            .transpose()?,
        console_socket: job.console_socket,
        preserve_fds: 0,
    };
    let id = job.id;
    // Sends the failure on the ready pipe and returns it.
    let refuse = |ready: &mut File, e: anyhow::Error| {
        let _ = Ready::failed(&e).send(ready);
        Err(e)
    };
    let namespace = |op: Result<i32>, ready: &mut File| match op {
        Ok(pid) => {
            Ready::Ok { pid: Some(pid) }.send(ready)?;
            Ok(0)
        }
        Err(e) => refuse(ready, e),
    };
    match job.op {
        BundleOp::NamespaceCreate(bundle) => {
            let op = crate::namespace::runtime(&roots).create(&id, &bundle, io);
            namespace(op, &mut ready)
        }
        BundleOp::NamespaceExec(process) => {
            let op = crate::namespace::runtime(&roots).exec(
                &id,
                None,
                &process,
                io,
                &Default::default(),
            );
            namespace(op, &mut ready)
        }
        BundleOp::VmExec(process, sub_cgroup) => {
            let rec = Record::load(&roots, &id)?;
            let req = exec_request(&process, sub_cgroup);
            let handle = match MicroVmBackend::new(&roots).exec(&rec, &req, io) {
                Ok(h) => h,
                Err(e) => return refuse(&mut ready, e),
            };
            Ready::Ok { pid: None }.send(&mut ready)?;
            drop(ready);
            handle.wait()
        }
        BundleOp::Run => {
            let rec = Record::load(&roots, &id)?;
            let backend = MicroVmBackend::new(&roots);
            let sandbox = match backend.create(&rec, io) {
                Ok(s) => s,
                Err(e) => return refuse(&mut ready, e),
            };
            // The host's hooks, now that the container exists in the
            // guest; a failing one fails `create`, as with runc.
            if let Err(e) = creation_hooks(&rec) {
                let _ = sandbox.release();
                return refuse(&mut ready, e);
            }
            Ready::Ok { pid: None }.send(&mut ready)?;
            drop(ready);
            forward_signals(&roots, &rec);
            let exit = sandbox.wait()?;
            let _ = sandbox.release();
            with_record(&roots, &rec.id, |r| {
                let _ = r.transition(Status::Stopped);
                r.exit_code = Some(exit.code);
                r.oom_killed = exit.oom_killed;
                r.error = exit.error.clone();
                r.finished = Some(Utc::now());
            });
            if let Some(e) = &exit.error {
                eprintln!("capsa: {e}");
            }
            Ok(exit.code)
        }
    }
}

/// createRuntime, then prestart (crate::hooks). This process is the PID
/// the engine is given.
fn creation_hooks(rec: &Record) -> Result<()> {
    let Some(bundle) = &rec.bundle else {
        return Ok(());
    };
    let spec = crate::oci::load_spec(bundle)?;
    let state = crate::hooks::state(
        &spec,
        &rec.id,
        "creating",
        std::process::id() as i32,
        bundle,
    );
    crate::hooks::run(&spec, crate::hooks::HostHooks::CreateRuntime, &state)?;
    crate::hooks::run(&spec, crate::hooks::HostHooks::Prestart, &state)
}

/// Signals sent to the monitor (by an engine that signals the PID it was
/// given) go to the container in the guest.
fn forward_signals(roots: &Roots, rec: &Record) {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for s in crate::monitor::FORWARDED_SIGNALS {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    let roots = roots.clone();
    let rec = rec.clone();
    std::thread::spawn(move || {
        let other = MicroVmBackend::new(&roots);
        while let Ok(sig) = set.wait() {
            let _ = other.kill(&rec, sig);
        }
    });
}

fn exec_request(p: &Process, sub_cgroup: Option<String>) -> ExecRequest {
    ExecRequest {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        workdir: Some(p.cwd().display().to_string()),
        user: Some((p.user().uid(), p.user().gid())),
        tty: p.terminal().unwrap_or(false),
        sub_cgroup,
    }
}
