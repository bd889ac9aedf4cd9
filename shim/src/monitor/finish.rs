//! The end of a container, whoever collects it (the monitor, or its
//! keeper when the monitor was killed): record the exit and give back what
//! the container held on the host.

use chrono::Utc;
use nix::sys::signal::Signal;

use crate::backend::{Backend, Exit, Sandbox};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};

/// Signals a monitor passes on to its container, as docker's and
/// containerd's do.
pub const FORWARDED_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Records the exit and gives back what the container held on the host:
/// through its `sandbox` handle, or by its record when none was made.
pub(super) fn finish(
    roots: &Roots,
    backend: &dyn Backend,
    sandbox: Option<&dyn Sandbox>,
    rec: &mut Record,
    exit: Exit,
) {
    rec.oom_killed = exit.oom_killed;
    // `rename` may have changed the record since the monitor read it: the
    // record saved below must not bring the old name back.
    if let Ok(now) = Record::load(roots, &rec.id) {
        rec.name = now.name;
    }
    let released = match sandbox {
        Some(s) => s.release(),
        None => backend.release(rec),
    };
    if let Err(e) = released {
        tracing::warn!("releasing container {}: {e:#}", rec.id);
    }
    // As docker: a stopped container holds no address and no host port.
    if let Err(e) = crate::network::detach(roots, &rec.id) {
        tracing::warn!("tearing down the network of {}: {e:#}", rec.id);
    }
    if let Err(e) = backend.release_rootfs(&ContainerPaths::new(roots, &rec.id)) {
        tracing::warn!("unmounting the root of {}: {e:#}", rec.id);
    }
    if let Err(e) = rec.transition(Status::Stopped) {
        tracing::debug!("{e:#}");
    }
    rec.exit_code = Some(exit.code);
    rec.finished = Some(Utc::now());
    rec.pid = None;
    rec.error = exit.error;
    if exit.oom_killed {
        crate::events::emit(roots, rec, "oom", &[]);
    }
    crate::events::emit(roots, rec, "die", &[("exitCode", exit.code.to_string())]);
    if rec.auto_remove {
        let _ = crate::backends::remove_files(roots, rec);
        crate::events::emit(roots, rec, "destroy", &[]);
    } else if let Err(e) = rec.save(roots) {
        tracing::warn!("saving the record of {}: {e:#}", rec.id);
    } else {
        super::restart::schedule(roots, rec);
    }
}
