//! `delete`: removes a stopped container (with `force`, a running one)
//! and everything it has on the host.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use super::common::{error, leave_pod, record, status_of};
use crate::backend::Backend;
use crate::microvm::MicroVmBackend;
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
                let deadline = Instant::now() + Duration::from_secs(10);
                while monitor_running(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if monitor_running(pid) {
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

/// Alive and not yet a zombie.
fn monitor_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}
