//! `pause` and `resume`: freezes and thaws every process of a container.

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::Roots;

use super::{coded, IdArg, EXIT_RUNC_ERROR};

/// runc's `pause ID` (reached through `capsa pause`, which also serves
/// docker's form) and its thaw.
pub fn pause_bundle(roots: &Roots, id: &str, freeze: bool) -> Result<()> {
    if freeze {
        oci::pause(roots, id)
    } else {
        oci::resume(roots, id)
    }
    .map_err(coded(EXIT_RUNC_ERROR))
}

pub fn resume(roots: &Roots, a: IdArg) -> Result<i32> {
    pause_bundle(roots, &a.id, false)?;
    Ok(0)
}
