//! The keeper: the parent of a container's monitor, which takes the
//! monitor's place if the monitor is killed.
//!
//! A monitor killed with SIGKILL cannot record anything. Its orphans go to
//! the nearest child subreaper above it, the keeper, so the keeper is the
//! only process Linux lets collect the container's own exit status then
//! (`waitpid` on the adopted process; in VM mode the guest agent still holds
//! it and answers a new connection's `Wait`). The keeper forwards signals
//! sent to it to the monitor and otherwise only waits.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::finish::{finish, FORWARDED_SIGNALS};
use crate::backend::Exit;
use crate::logs::{LogLimits, LogWriter, Stream};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};
use crate::stdio::{Pump, Source};
use crate::EXIT_CAPSA_ERROR;

/// Whether this process may fork and go on running Rust code in the child:
/// only with one thread.
pub fn can_fork() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}

pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")
}

/// Waits for the monitor `child` of container `id`. Returns the monitor's
/// exit code when it exits by itself; when it is killed, finishes its work.
/// `outputs` are the read ends of the container's stdout and stderr pipes.
pub fn keep(roots: &Roots, id: &str, child: Pid, outputs: Option<[OwnedFd; 2]>) -> Result<i32> {
    let mut signals = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        signals.add(s);
    }
    signals.add(Signal::SIGCHLD);
    signals.thread_block()?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)?;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return take_over(roots, id, sig, outputs),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the container's monitor"),
        }
        let Some(info) = sfd.read_signal()? else {
            continue;
        };
        let sig = Signal::try_from(info.ssi_signo as i32).ok();
        // A signal someone sent to us (kill, not the terminal: the
        // terminal's reach the monitor in our process group directly).
        let sent = matches!(info.ssi_code, libc::SI_USER | libc::SI_QUEUE);
        if let (Some(sig), true) = (sig.filter(|s| *s != Signal::SIGCHLD), sent) {
            let _ = nix::sys::signal::kill(child, sig);
        }
    }
}

/// The monitor was killed by `sig`: collect the container's exit as the
/// monitor would have, and give back what it held.
fn take_over(roots: &Roots, id: &str, sig: Signal, outputs: Option<[OwnedFd; 2]>) -> Result<i32> {
    let Ok(mut rec) = Record::load(roots, id) else {
        // Removed (`--rm`) before it was killed: nothing is left to do.
        return Ok(128 + sig as i32);
    };
    tracing::warn!(
        "the monitor of container {} was killed ({sig}); its keeper collects the exit",
        rec.name
    );
    let backend = crate::backends::backend_for(roots, rec.isolation)?;
    match (rec.status(), rec.pid) {
        (Status::Stopped, _) => {
            // Killed while finishing: the exit is recorded already, but
            // the network may still be set up.
            crate::network::detach(roots, &rec.id)?;
            if rec.auto_remove {
                crate::backends::remove_files(roots, &rec)?;
            }
            Ok(rec.exit_code.unwrap_or(EXIT_CAPSA_ERROR))
        }
        (Status::Running | Status::Paused, Some(pid)) => {
            let drain = outputs.map(|fds| {
                let log = ContainerPaths::new(roots, id).log();
                let limits = rec.log;
                std::thread::spawn(move || drain_to_log(fds, &log, limits))
            });
            let sandbox = backend.adopt(&rec, pid);
            let exit = sandbox.wait()?;
            if let Some(t) = drain {
                let _ = t.join();
            }
            let code = exit.code;
            rec.monitor_pid = None;
            finish(
                roots,
                backend.as_ref(),
                Some(sandbox.as_ref()),
                &mut rec,
                exit,
            );
            Ok(code)
        }
        _ => {
            // Killed before the container ran: undo what was made.
            let exit = Exit {
                code: EXIT_CAPSA_ERROR,
                oom_killed: false,
                error: Some(format!(
                    "the container's monitor was killed ({sig}) before the container started"
                )),
            };
            finish(roots, backend.as_ref(), None, &mut rec, exit);
            Ok(EXIT_CAPSA_ERROR)
        }
    }
}

/// Copies what the container still writes into its log, until it exits.
fn drain_to_log(fds: [OwnedFd; 2], log: &std::path::Path, limits: LogLimits) -> Result<()> {
    let [out, err] = fds;
    let pump = Pump {
        sources: vec![
            Source {
                fd: out,
                stream: Stream::Stdout,
            },
            Source {
                fd: err,
                stream: Stream::Stderr,
            },
        ],
        input: None,
        log: LogWriter::create(log, limits)?,
        attach: false,
        signals: None,
    };
    Ok(pump.run(&mut |_| {})?)
}
