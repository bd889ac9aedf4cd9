//! What an isolation backend must do. The lifecycle core and the monitor
//! drive every container through these traits, so both isolation modes
//! share one state machine, one log format and one set of exit-code rules.
//!
//! Two kinds of operation, because two kinds of process act on a container:
//! the [`Backend`] is a stateless driver that any capsa process can use on
//! a container by its record (`capsa kill`, `exec`, runc's `start`, `rm`),
//! and [`Backend::create`] returns a [`Sandbox`], the handle the creating
//! process (the monitor) keeps: it owns the container's first process, or
//! its VM and the connection to the guest agent, and is what waits for the
//! end and gives everything back.

use capsa_image::{Image, Store};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;

pub use capsa_container::{ExecRequest, ProcessIo};

use crate::paths::ContainerPaths;
use crate::record::Record;

/// How a container's (or exec'd) process ended.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    /// docker's convention: the exit code, or 128+N for signal N.
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Why the container ended abnormally (its VM died, …), if it did.
    pub error: Option<String>,
}

impl Exit {
    /// This exit, failed with `result`'s error if it has one.
    pub fn after(mut self, result: Result<()>) -> Exit {
        if let Err(e) = result {
            self.code = crate::EXIT_CAPSA_ERROR;
            self.error = Some(format!("{e:#}"));
        }
        self
    }
}

/// A process started by `exec`: a local child to wait for, or a remote one
/// whose exit code a closure fetches (and another signals).
pub enum ProcessHandle {
    Pid(i32),
    Remote {
        wait: Box<dyn FnOnce() -> Result<i32> + Send>,
        kill: Box<dyn Fn(Signal) -> Result<()> + Send>,
    },
}

impl ProcessHandle {
    /// Waits for the process to end; its exit code as docker reports it.
    pub fn wait(self) -> Result<i32> {
        match self {
            ProcessHandle::Pid(pid) => capsa_container::process::wait_pid(pid),
            ProcessHandle::Remote { wait, .. } => wait(),
        }
    }

    /// [`Self::wait`] until `deadline`; past it the process and its
    /// process group are killed (SIGKILL), and None is returned once it
    /// has ended.
    pub fn wait_until(self, deadline: std::time::Instant) -> Result<Option<i32>> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        use std::time::{Duration, Instant};
        match self {
            ProcessHandle::Pid(pid) => {
                let p = nix::unistd::Pid::from_raw(pid);
                loop {
                    match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
                        Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e).context("waiting for the process"),
                    }
                    if Instant::now() >= deadline {
                        // Its process group too: an exec'd process leads
                        // one (it ran setsid), which holds what it started.
                        let _ = nix::sys::signal::killpg(p, Signal::SIGKILL);
                        let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
                        capsa_container::process::wait_pid(pid)?;
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            ProcessHandle::Remote { wait, kill } => {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || tx.send(wait()));
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(r) => r.map(Some),
                    Err(_) => {
                        kill(Signal::SIGKILL)?;
                        let _ = rx.recv();
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// A container created by this process (see the module docs).
pub trait Sandbox: Send + Sync {
    /// The PID this process is the parent of: the container's first
    /// process, or its VMM (for a pod member, the monitor itself).
    fn pid(&self) -> i32;
    /// Lets the container's process run its command.
    fn start(&self) -> Result<()>;
    fn kill(&self, signal: Signal) -> Result<()>;
    /// Waits for the container to end. Called after its output streams
    /// closed and before [`Sandbox::release`].
    fn wait(&self) -> Result<Exit>;
    /// [`Sandbox::wait`], running `after_exit` once the process has exited
    /// and before anything is torn down (a VM still runs, so its guest
    /// can still read the container's disks). Its failure becomes the
    /// exit's error.
    fn wait_then(&self, after_exit: &mut dyn FnMut() -> Result<()>) -> Result<Exit> {
        let exit = self.wait()?;
        Ok(exit.after(after_exit()))
    }
    /// Gives back what the container holds on the host (cgroups, runtime
    /// state, the VM). Idempotent.
    fn release(&self) -> Result<()>;
}

pub trait Backend {
    /// Makes the root filesystem the bundle's config.json points at.
    /// `ephemeral`: the container's writes are thrown away when it stops
    /// (`--rm`), so they need not survive a crash of the host.
    /// `userns`: the container's user namespace mapping, whose root owns
    /// the image's files (`--userns=auto`).
    fn prepare_rootfs(
        &self,
        paths: &ContainerPaths,
        store: &Store,
        image: &Image,
        ephemeral: bool,
        userns: Option<&oci_spec::runtime::LinuxIdMapping>,
    ) -> Result<()>;
    /// Undoes `prepare_rootfs`; idempotent, and safe on a half-prepared one.
    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()>;
    /// Creates the container from its bundle; its process waits for
    /// `start`. The caller is the parent of [`Sandbox::pid`].
    fn create(&self, rec: &Record, io: ProcessIo) -> Result<Box<dyn Sandbox>>;
    /// The handle for a container whose creator died, for the process that
    /// inherited its children (the monitor's keeper, a subreaper): `pid`
    /// is the creator's [`Sandbox::pid`].
    fn adopt(&self, rec: &Record, pid: i32) -> Box<dyn Sandbox>;
    /// `start` from another process than the creator (runc's `start`).
    fn start(&self, rec: &Record) -> Result<()>;
    fn kill(&self, rec: &Record, signal: Signal) -> Result<()>;
    /// Gives the running container new cgroup limits (its spec's whole
    /// `linux.resources`).
    fn update(&self, rec: &Record, resources: &LinuxResources) -> Result<()>;
    /// Starts another process in the running container.
    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<ProcessHandle>;
    /// Writes the container's writable layer to `out` as an OCI layer tar
    /// (`commit`), its processes frozen meanwhile if it runs.
    fn diff(&self, rec: &Record, out: &mut dyn std::io::Write) -> Result<()>;
    /// Releases what a container whose creator is gone still holds on the
    /// host (cgroups, runtime state, a VMM left behind). Idempotent.
    fn release(&self, rec: &Record) -> Result<()>;
}
