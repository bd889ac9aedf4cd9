//! What an isolation backend must do. The lifecycle core and the monitor
//! drive every container through this trait, so both isolation modes share
//! one state machine, one log format and one set of exit-code rules.

use capsa_image::{Image, Store};

use anyhow::Result;
use nix::sys::signal::Signal;

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

/// A process started by `exec`: a local child to wait for, or a remote one
/// whose exit code a closure fetches.
pub enum ProcessHandle {
    Pid(i32),
    Remote(Box<dyn FnOnce() -> Result<i32> + Send>),
}

pub trait Backend {
    /// Makes the root filesystem the bundle's config.json points at.
    /// `ephemeral`: the container's writes are thrown away when it stops
    /// (`--rm`), so they need not survive a crash of the host.
    fn prepare_rootfs(
        &self,
        paths: &ContainerPaths,
        store: &Store,
        image: &Image,
        ephemeral: bool,
    ) -> Result<()>;
    /// Undoes `prepare_rootfs`; idempotent, and safe on a half-prepared one.
    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()>;
    /// Creates the container from its bundle; its process waits for `start`.
    /// Returns the host PID of the process the caller owns (the container's
    /// first process, or its VMM); the caller is its parent.
    fn create(&self, rec: &Record, io: ProcessIo) -> Result<i32>;
    fn start(&self, rec: &Record) -> Result<()>;
    /// Waits for the container started by this backend object to end.
    /// Called by the monitor, after the output streams closed and before
    /// `release`.
    fn wait(&self, rec: &Record, pid: i32) -> Result<Exit>;
    fn kill(&self, rec: &Record, signal: Signal) -> Result<()>;
    /// Starts another process in the running container.
    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<ProcessHandle>;
    /// Releases what the created container holds on the host (cgroups,
    /// runtime state, the VM). Idempotent.
    fn release(&self, rec: &Record) -> Result<()>;
}
