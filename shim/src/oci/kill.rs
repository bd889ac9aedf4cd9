//! `kill`: a signal to a container's first process, or to all of them.

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use super::common::{error, record, status_of};
use crate::backend::Backend;
use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::Isolation;

/// Sends `signal` to the container's first process, or with `all` to every
/// process of the container.
pub fn kill(roots: &Roots, id: &str, signal: Signal, all: bool) -> Result<()> {
    let rec = record(roots, id)?;
    if !status_of(roots, &rec).can_kill() {
        bail!(error(format!("container {id} is not running")));
    }
    match rec.isolation {
        Isolation::Container => {
            let mut c = crate::namespace::runtime(roots).container(id)?;
            c.kill(signal, all)
                .map_err(|e| error(format!("sending {signal} to {id}: {e}")))?;
        }
        // In the guest the container is alone in its VM: `all` only
        // differs for processes that escaped its namespace, and there are
        // none to escape to.
        Isolation::Vm => MicroVmBackend::new(roots).kill(&rec, signal)?,
    }
    Ok(())
}
