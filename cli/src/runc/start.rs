//! `start`: runs the process of a container made by `create`.

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::Roots;

use super::{coded, IdArg, EXIT_RUNC_ERROR};

pub fn start(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::start(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}
