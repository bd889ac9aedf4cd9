//! Starting a monitor in a process of its own: `capsa __monitor JOB`, in a
//! new session (so a ^C meant for the command that started it does not
//! reach it), with the container's standard streams and the ready pipe as
//! fd 3. The starting command returns once the monitor sent its
//! [`Ready`] message; the monitor lives on.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::bundle::BundleJob;
use super::ready::Ready;
use super::{supervise, Mode};
use crate::backend::ProcessIo;
use crate::paths::Roots;
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// What a monitor process is started for.
#[derive(Serialize, Deserialize)]
pub enum Job {
    /// `capsa run -d`: run the created container `id` to its end.
    Run {
        lib: PathBuf,
        run: PathBuf,
        id: String,
    },
    /// A container made from an engine's bundle (runc's create and exec).
    Bundle(BundleJob),
    /// A restart policy's restarter: start stopped container `id` again
    /// after `delay_ms` (no ready pipe; nobody waits for it).
    Restart {
        lib: PathBuf,
        run: PathBuf,
        id: String,
        delay_ms: u64,
    },
    /// The healthcheck checker of running container `id` (crate::health),
    /// a child of its monitor that dies with it.
    Health {
        lib: PathBuf,
        run: PathBuf,
        id: String,
    },
}

/// The ready pipe's descriptor in the monitor.
const READY_FD: i32 = 3;

/// Starts a monitor for `job` and waits for its [`Ready`] message.
/// Returns the monitor's PID (the caller's child, to reap), or the PID it
/// reported for a namespace operation (the monitor is then reaped here).
/// A failure carries the monitor's exit code and message.
pub fn spawn(job: &Job, io: ProcessIo) -> Result<i32> {
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let mut cmd = monitor_command(job, io)?;
    let ready_fd = ready_w.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if ready_fd != READY_FD {
                nix::unistd::dup2(ready_fd, READY_FD)?;
            } else {
                let flags = libc::fcntl(READY_FD, libc::F_GETFD);
                libc::fcntl(READY_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| starting(&cmd))?;
    drop(ready_w);
    let pid = child.id() as i32;
    // The child is the caller's to reap: do not wait for it through `child`.
    std::mem::forget(child);
    let ready = Ready::receive(File::from(ready_r));
    if let Ok(Some(Ready::Ok { pid: None })) = ready {
        return Ok(pid);
    }
    // Every other answer means the monitor has exited or is about to.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    match ready? {
        Some(Ready::Ok { pid: p }) => Ok(p.unwrap_or(pid)),
        Some(Ready::Failed { code, message }) => Err(CodedError::new(code, message).into()),
        None => Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            "the container's monitor exited before the container was ready",
        )
        .into()),
    }
}

/// `capsa __monitor JOB` with the given standard streams (/dev/null where
/// none is given).
fn monitor_command(job: &Job, io: ProcessIo) -> Result<Command> {
    let mut cmd = Command::new(capsa_binary()?);
    cmd.arg("__monitor").arg(serde_json::to_string(job)?);
    let stdio = |fd: Option<OwnedFd>| fd.map_or_else(Stdio::null, Stdio::from);
    cmd.stdin(stdio(io.stdin))
        .stdout(stdio(io.stdout))
        .stderr(stdio(io.stderr));
    Ok(cmd)
}

fn starting(cmd: &Command) -> String {
    format!(
        "starting {}",
        std::path::Path::new(cmd.get_program()).display()
    )
}

/// Starts `job` in a session of its own and does not wait for it (a
/// restart policy's restarter): it outlives us, and init (or the
/// subreaper) reaps it.
pub(super) fn start_detached(job: &Job) -> Result<()> {
    let mut cmd = monitor_command(job, ProcessIo::default())?;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    std::mem::forget(cmd.spawn().with_context(|| starting(&cmd))?);
    Ok(())
}

/// Starts `job` as our child, killed when we die (a healthcheck checker).
pub(crate) fn start_child(job: &Job) -> Result<std::process::Child> {
    let mut cmd = monitor_command(job, ProcessIo::default())?;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(Into::into)
        });
    }
    cmd.spawn().with_context(|| starting(&cmd))
}

/// The `capsa` binary that has the `__monitor` command: this one, or for
/// another program (the containerd shim) the one beside it.
fn capsa_binary() -> Result<PathBuf> {
    let exe = capsa_container::self_exe::path().context("locating this program")?;
    if std::env::var_os("CAPSA_BIN").is_none() && exe.file_name() == Some("capsa".as_ref()) {
        return Ok(exe);
    }
    crate::microvm::guest::sibling_binary("capsa", "CAPSA_BIN")
}

/// `capsa __monitor JOB`: the monitor's side. Returns the exit status to
/// end with.
pub fn main(args: &[String]) -> i32 {
    // SAFETY: fd 3 is the ready pipe `spawn` set up for us, and nothing
    // else in this process owns it (a restarter has none: it is not read).
    let ready = || unsafe { File::from_raw_fd(READY_FD) };
    let job = serde_json::from_str(args.first().map(String::as_str).unwrap_or(""))
        .context("the monitor's job");
    let result = job.and_then(|job| match job {
        Job::Run { lib, run, id } => {
            supervise(&Roots { lib, run }, &id, Mode::Detached { ready: ready() })
        }
        Job::Bundle(job) => super::bundle::run(job, ready()),
        Job::Restart {
            lib,
            run,
            id,
            delay_ms,
        } => super::restart::run(
            &Roots { lib, run },
            &id,
            std::time::Duration::from_millis(delay_ms),
        ),
        Job::Health { lib, run, id } => crate::health::run_checker(&Roots { lib, run }, &id),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capsa: {e:#}");
            CodedError::code_of(&e)
        }
    }
}

/// Whether `pid` still runs a `capsa __monitor` job (a monitor or its
/// keeper) of container `id`. A zombie's command line is empty and a
/// recycled pid names another job, so neither counts.
fn is_monitor_of(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("__monitor") && c.contains(id)
    })
}

/// Waits, up to `timeout`, until none of `pids` runs a monitor job of
/// container `id`; whether they all ended.
pub fn wait_monitors_gone(id: &str, pids: &[i32], timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if !pids.iter().any(|p| is_monitor_of(*p, id)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
