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
        Isolation::Vm => MicroVmBackend::new(roots).start(&rec)?,
    }
    with_record(roots, id, |r| {
        if r.status().can_start() {
            let _ = r.transition(Status::Running);
        }
        r.started = Some(Utc::now());
    });
    Ok(())
}
