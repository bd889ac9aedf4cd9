//! The processes of a container: their standard streams, `exec` requests,
//! and waiting for one.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use oci_spec::runtime::Process;

/// Standard streams for a new process. `None` means /dev/null, except that
/// with `console_socket` set the process gets a new terminal whose master
/// end is sent to that socket.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console_socket: Option<PathBuf>,
    /// runc's `--preserve-fds N`: this process's descriptors 3 to 3+N-1
    /// are passed on to the new process, at the same numbers.
    pub preserve_fds: u32,
}

/// Where runc's `exec` puts its process, beyond the container itself.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// `--cgroup PATH`: a sub-cgroup of the container's (made if missing).
    pub sub_cgroup: Option<String>,
    /// `--ignore-paused`: exec into a paused container (the process joins
    /// the frozen cgroup and runs once it is thawed).
    pub ignore_paused: bool,
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
    /// runc's `exec --cgroup`: see [`ExecOptions::sub_cgroup`].
    pub sub_cgroup: Option<String>,
}

/// The process `capsa exec` starts: the container's own process (its
/// capabilities, rlimits, no_new_privileges, environment), with the
/// request's command, extra environment, directory, user and terminal.
pub fn exec_process(init: &Process, req: &ExecRequest) -> Result<Process> {
    let mut env: Vec<String> = init.env().clone().unwrap_or_default();
    for kv in &req.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut p = init.clone();
    p.set_args(Some(req.args.clone()));
    p.set_env(Some(env));
    p.set_terminal(Some(req.tty));
    p.set_console_size(None);
    if let Some(dir) = &req.workdir {
        crate::rootfs::check_workdir(std::path::Path::new(dir))?;
        p.set_cwd(PathBuf::from(dir));
    }
    if let Some((uid, gid)) = req.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(None);
        p.set_user(user);
    }
    Ok(p)
}

/// docker's convention: the exit code, or 128+N for a process killed by
/// signal N. `pid` must be our child.
pub fn wait_pid(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the container's process"),
        }
    }
}
