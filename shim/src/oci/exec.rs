//! `exec`: another process in a running container.

use anyhow::{bail, Result};
use oci_spec::runtime::Process;

use super::common::{error, record, spawn_monitor, status_of};
use crate::backend::ProcessIo;
use crate::monitor::bundle::{BundleJob, BundleOp};
use crate::paths::Roots;
use crate::record::Isolation;

/// Runs `process` in the running container. Returns the PID of a process
/// that is the caller's child and exits with the process's status.
pub fn exec(roots: &Roots, id: &str, process: &Process, io: ProcessIo) -> Result<i32> {
    crate::spec_check::check_process(process, "")
        .map_err(|e| error(format!("invalid process: {e}")))?;
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_exec() {
        bail!(error(format!(
            "cannot exec in a container that is {}",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container if !crate::monitor::keeper::can_fork() => {
            let op = BundleOp::NamespaceExec(Box::new(process.clone()));
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
        Isolation::Container => crate::namespace::runtime(roots).exec(id, None, process, io),
        Isolation::Vm => {
            let op = BundleOp::VmExec(Box::new(process.clone()));
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
    }
}
