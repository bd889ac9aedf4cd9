//! What an isolation backend must do. The lifecycle core and the monitor
//! drive every container through this trait, so both isolation modes share
//! one state machine, one log format and one set of exit-code rules.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::Result;
use nix::sys::signal::Signal;

use crate::paths::{ContainerPaths, Roots};
use crate::record::Record;

/// Standard streams for a new process. `None` means /dev/null, except that
/// with `console_socket` set the process gets a new terminal whose master
/// end is sent to that socket.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console_socket: Option<PathBuf>,
}

/// A process to run inside an existing container (`capsa exec`).
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` pairs on top of the container's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<(u32, u32)>,
    pub tty: bool,
}

pub trait Backend {
    /// Makes the root filesystem the bundle's config.json points at.
    fn prepare_rootfs(&self, paths: &ContainerPaths, layers: &[PathBuf]) -> Result<()>;
    /// As `prepare_rootfs`, for a container whose writes are thrown away when
    /// it stops (`--rm`): they need not survive a crash of the host, so a
    /// backend may skip syncing them.
    fn prepare_ephemeral_rootfs(&self, paths: &ContainerPaths, layers: &[PathBuf]) -> Result<()> {
        self.prepare_rootfs(paths, layers)
    }
    /// Undoes `prepare_rootfs`; idempotent, and safe on a half-prepared one.
    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()>;
    /// Creates the container from its bundle; its process waits for `start`.
    /// Returns the host PID the caller waits on (the caller is its parent).
    fn create(&self, rec: &Record, io: ProcessIo) -> Result<i32>;
    fn start(&self, rec: &Record) -> Result<()>;
    fn kill(&self, rec: &Record, signal: Signal) -> Result<()>;
    /// Starts another process in the running container; returns its host
    /// PID, a child of the caller.
    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<i32>;
    /// Whether the kernel's OOM killer killed a process of the container.
    /// Must be asked before `release`.
    fn oom_killed(&self, rec: &Record) -> bool;
    /// Releases what the created container holds on the host (cgroups,
    /// runtime state). Idempotent.
    fn release(&self, rec: &Record) -> Result<()>;
}

pub fn for_record(roots: &Roots, rec: &Record) -> Result<Box<dyn Backend>> {
    crate::lifecycle::backend_for(roots, rec.isolation)
}
