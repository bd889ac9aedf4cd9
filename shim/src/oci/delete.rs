//! `delete`: removes a stopped container (with `force`, a running one)
//! and everything it has on the host.

use std::time::Duration;

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use super::common::{error, leave_pod, record, status_of};
use crate::backend::Backend;
use crate::microvm::MicroVmBackend;
use crate::monitor::spawn::wait_monitors_gone;
use crate::paths::Roots;
use crate::record::Isolation;

/// Deletes a stopped container and everything it has on the host; with
/// `force`, kills a running one first.
pub fn delete(roots: &Roots, id: &str, force: bool) -> Result<()> {
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_delete() && !force {
        bail!(error(format!(
            "cannot delete container {id} that is {}: stop it first or use --force",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => crate::namespace::runtime(roots).delete(id)?,
        Isolation::Vm => {
            if let Some(pid) = rec.monitor_pid.filter(|p| crate::record::pid_alive(*p)) {
                let _ = MicroVmBackend::new(roots).kill(&rec, Signal::SIGKILL);
                // The monitor is the caller's child: it exits once the VM
                // is gone; the caller reaps it.
                if !wait_monitors_gone(id, &[pid], Duration::from_secs(10)) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    leave_pod(roots, &rec);
    crate::backends::remove_files(roots, &rec)?;
    if rec.isolation == Isolation::Vm {
        // poststop on the host (crate::hooks): a failure is a warning and
        // the container is gone anyway, as the runtime spec says.
        if let Some(bundle) = &rec.bundle {
            if let Ok(spec) = super::common::load_spec(bundle) {
                let state = crate::hooks::state(&spec, &rec.id, "stopped", 0, bundle);
                if let Err(e) = crate::hooks::run(&spec, crate::hooks::HostHooks::Poststop, &state)
                {
                    tracing::warn!("{e:#}");
                }
            }
        }
    }
    Ok(())
}
