//! runc's `events --stats` and `ps`: a bundle container's resource usage
//! and host PIDs ([`crate::usage`] for both modes).

use anyhow::Result;
use capsa_proto::Stats;

use super::common::{record, status_of};
use crate::paths::Roots;
use crate::record::Status;

pub fn stats(roots: &Roots, id: &str) -> Result<Stats> {
    crate::usage::stats(roots, &record(roots, id)?)
}

pub fn pids(roots: &Roots, id: &str) -> Result<Vec<i32>> {
    let rec = record(roots, id)?;
    // A bundle's container-mode status is the runtime's, not the record's.
    if status_of(roots, &rec) == Status::Stopped {
        return Ok(vec![]);
    }
    crate::usage::pids(roots, &rec)
}
