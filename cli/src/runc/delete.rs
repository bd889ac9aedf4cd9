//! `delete`: removes containers made by `create`.

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::{CodedError, Roots};
use clap::Args;

use super::{coded, is_oci, names_a_container, state_or_missing, EXIT_RUNC_ERROR};

#[derive(Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Container IDs.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub fn delete(roots: &Roots, a: DeleteArgs) -> Result<i32> {
    for id in &a.ids {
        // runc: `delete --force` of a container that does not exist succeeds
        // (containerd and podman clean up that way).
        let known = names_a_container(roots, id);
        if a.force && !known {
            continue;
        }
        if known && !is_oci(roots, id) {
            return Err(CodedError::new(
                EXIT_RUNC_ERROR,
                format!("container {id} was made by `capsa run`: remove it with `capsa rm`"),
            )
            .into());
        }
        state_or_missing(roots, id)
            .and_then(|_| oci::delete(roots, id, a.force))
            .map_err(coded(EXIT_RUNC_ERROR))?;
    }
    Ok(0)
}
