//! `exec`: another process in a running container.

use anyhow::{bail, Result};
use oci_spec::runtime::Process;

use super::common::{error, record, spawn_monitor, status_of};
use crate::backend::ProcessIo;
use crate::monitor::bundle::{BundleJob, BundleOp};
use crate::paths::Roots;
use crate::record::{Isolation, Status};
pub use capsa_container::ExecOptions;

/// Runs `process` in the running container (or, with
/// `options.ignore_paused`, a paused one). Returns the PID of a process
/// that is the caller's child and exits with the process's status.
pub fn exec(
    roots: &Roots,
    id: &str,
    process: &Process,
    io: ProcessIo,
    options: &ExecOptions,
) -> Result<i32> {
    crate::spec_check::check_process(process, "")
        .map_err(|e| error(format!("invalid process: {e}")))?;
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    let paused_ok = options.ignore_paused && status == Status::Paused;
    if !status.can_exec() && !paused_ok {
        bail!(error(format!(
            "cannot exec in a container that is {}",
            status.runc_name()
        )));
    }
    let plain = options.sub_cgroup.is_none() && !options.ignore_paused && io.preserve_fds == 0;
    if rec.isolation == Isolation::Vm && (options.ignore_paused || io.preserve_fds > 0) {
        // The guest's processes are not the host's: no host descriptor
        // reaches them, and a paused VM runs nothing, not even its agent.
        bail!(error(
            "exec --ignore-paused and --preserve-fds are not available in VM mode"
        ));
    }
    match rec.isolation {
        Isolation::Container if !crate::monitor::keeper::can_fork() => {
            if !plain {
                bail!(error(
                    "exec --cgroup, --ignore-paused and --preserve-fds need a single-threaded caller"
                ));
            }
            let op = BundleOp::NamespaceExec(Box::new(process.clone()));
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
        Isolation::Container => {
            crate::namespace::runtime(roots).exec(id, None, process, io, options)
        }
        Isolation::Vm => {
            let op = BundleOp::VmExec(Box::new(process.clone()), options.sub_cgroup.clone());
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
    }
}
