//! `pause` and `resume`: freezes and thaws every process of a container.

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::Roots;

use super::{coded, IdArg, EXIT_RUNC_ERROR};

pub fn pause(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::pause(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}

pub fn resume(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::resume(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}
