//! `start`: lets a created container run its process.

use anyhow::{bail, Result};
use chrono::Utc;

use super::common::{error, record, status_of};
use crate::backend::Backend;
use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::with_record;
use crate::record::Isolation;
use crate::record::Status;

fn poststart(rec: &crate::record::Record) -> Result<()> {
    let Some(bundle) = &rec.bundle else {
        return Ok(());
    };
    let spec = super::common::load_spec(bundle)?;
    let state = crate::hooks::state(&spec, &rec.id, "running", rec.pid.unwrap_or(0), bundle);
    crate::hooks::run(&spec, crate::hooks::HostHooks::Poststart, &state)
}

/// Lets the created container run its process.
pub fn start(roots: &Roots, id: &str) -> Result<()> {
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_start() {
        bail!(error(format!(
            "cannot start a container that is {}",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => crate::namespace::runtime(roots).start(id)?,
        Isolation::Vm => {
            let vm = MicroVmBackend::new(roots);
            vm.start(&rec)?;
            // poststart on the host (crate::hooks); a failing one ends
            // the container and fails `start`, as with runc.
            if let Err(e) = poststart(&rec) {
                let _ = vm.kill(&rec, nix::sys::signal::Signal::SIGKILL);
                return Err(error(format!("{e:#}")));
            }
        }
    }
    with_record(roots, id, |r| {
        if r.status().can_start() {
            let _ = r.transition(Status::Running);
        }
        r.started = Some(Utc::now());
    });
    Ok(())
}
