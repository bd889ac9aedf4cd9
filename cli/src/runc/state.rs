//! `state`: a container's state as JSON.

use anyhow::Result;
use capsa_shim::Roots;

use super::{coded, state_or_missing, IdArg, EXIT_RUNC_ERROR};

pub fn state(roots: &Roots, a: IdArg) -> Result<i32> {
    let s = state_or_missing(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(0)
}
