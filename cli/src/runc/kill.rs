//! `kill`: runc's `kill ID [SIGNAL]` and docker's `kill [-s SIG] C…` in
//! one command.

use anyhow::{anyhow, bail, Result};
use capsa_shim::lifecycle::parse_signal;
use capsa_shim::oci;
use capsa_shim::Roots;
use clap::Args;

use super::{coded, is_oci, names_a_container, state_or_missing, EXIT_RUNC_ERROR};
use crate::containers;

/// `kill [-s SIG] [--all] CONTAINER… [SIGNAL]`: runc's `kill ID [SIGNAL]`
/// (default SIGTERM) for containers made by `create`, docker's
/// `kill [-s SIG] CONTAINER…` (default SIGKILL) for those made by `run`.
#[derive(Args)]
pub struct KillArgs {
    /// Signal to send (name, with or without SIG, or number).
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    signal: Option<String>,
    /// runc: send the signal to every process of the container.
    #[arg(short = 'a', long)]
    all: bool,
    /// Containers, then (runc) an optional signal.
    #[arg(required = true, value_name = "CONTAINER… [SIGNAL]")]
    args: Vec<String>,
}

pub fn kill(roots: &Roots, mut a: KillArgs) -> Result<i32> {
    // runc's `kill ID SIGNAL`: one container made by `create`, then a
    // signal that is not itself a container's whole ID or name.
    let mut positional_signal = None;
    if a.args.len() == 2 && is_oci(roots, &a.args[0]) {
        let last = &a.args[1];
        if parse_signal(last).is_some() && !names_a_container(roots, last) {
            positional_signal = a.args.pop();
        }
    }
    let runc = a.all || positional_signal.is_some() || a.args.iter().all(|c| is_oci(roots, c));
    if !runc {
        return containers::kill(
            roots,
            containers::KillArgs {
                signal: a.signal.unwrap_or_else(|| "KILL".into()),
                containers: a.args,
            },
        );
    }
    let run = || -> Result<i32> {
        let name = positional_signal
            .or(a.signal.clone())
            .unwrap_or_else(|| "TERM".into());
        let sig = parse_signal(&name).ok_or_else(|| anyhow!("unknown signal {name:?}"))?;
        for id in &a.args {
            let st = state_or_missing(roots, id)?;
            if let Err(e) = oci::kill(roots, id, sig, a.all) {
                if st.status == "stopped"
                    || oci::state(roots, id).is_ok_and(|s| s.status == "stopped")
                {
                    // containerd's runc shim matches "container not running"
                    // to treat the process as already finished.
                    bail!("container not running ({e:#})");
                }
                return Err(e);
            }
        }
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}
