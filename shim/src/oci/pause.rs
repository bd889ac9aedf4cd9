//! `pause` and `resume`: freezes and thaws a container.

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use super::common::{error, record, status_of};
use crate::microvm::vmm_pid;
use crate::paths::Roots;
use crate::record::with_record;
use crate::record::Isolation;
use crate::record::{Record, Status};

/// Freezes every process of the container (the whole VM in VM mode).
pub fn pause(roots: &Roots, id: &str) -> Result<()> {
    set_paused(roots, id, true)
}

pub fn resume(roots: &Roots, id: &str) -> Result<()> {
    set_paused(roots, id, false)
}

fn set_paused(roots: &Roots, id: &str, pause: bool) -> Result<()> {
    freeze(roots, &record(roots, id)?, pause)
}

/// Freezes (or thaws) `rec`, a bundle's container or `capsa run`'s: the
/// cgroup freezer in container mode, the VMM's vCPUs (SIGSTOP) in VM mode.
/// The record says `paused` until it is thawed.
pub(crate) fn freeze(roots: &Roots, rec: &Record, pause: bool) -> Result<()> {
    let id = &rec.id;
    let status = status_of(roots, rec);
    let allowed = if pause {
        status.can_pause()
    } else {
        status.can_resume()
    };
    if !allowed {
        bail!(error(format!(
            "cannot {} container {id} that is {}",
            if pause { "pause" } else { "resume" },
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => {
            let mut c = crate::namespace::runtime(roots).container(id)?;
            if pause { c.pause() } else { c.resume() }.map_err(|e| error(format!("{e}")))?;
            record_paused(roots, id, pause);
        }
        Isolation::Vm if rec.sandbox.is_some() => {
            bail!(error(format!(
                "container {id} shares its pod's VM: pause the pod's sandbox container instead"
            )));
        }
        Isolation::Vm => {
            // Stopping the VMM stops the vCPUs: the guest, and with it
            // the container, is frozen as a whole.
            let vmm = vmm_pid(rec).ok_or_else(|| error(format!("the VM of {id} is gone")))?;
            let sig = if pause {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(vmm), sig)?;
            record_paused(roots, id, pause);
        }
    }
    Ok(())
}

fn record_paused(roots: &Roots, id: &str, pause: bool) {
    with_record(roots, id, |r| {
        // Only if it did not stop meanwhile.
        let _ = r.transition(if pause {
            Status::Paused
        } else {
            Status::Running
        });
    });
}
