//! runc's `start`: runs the process of a container made by `create`
//! (`containers::start` tells it from docker's).

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::Roots;

use super::{coded, EXIT_RUNC_ERROR};

pub fn start_bundle(roots: &Roots, id: &str) -> Result<()> {
    oci::start(roots, id).map_err(coded(EXIT_RUNC_ERROR))
}
