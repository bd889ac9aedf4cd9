//! `ps`: docker's list of containers, or runc's processes of one.

use anyhow::{anyhow, bail, Context, Result};
use capsa_shim::oci;
use capsa_shim::Roots;
use clap::Args;

use super::{coded, state_or_missing, EXIT_RUNC_ERROR};
use crate::containers;

/// docker's `ps [-a] [-q]` (no container) and runc's
/// `ps [--format table|json] ID [PS-ARGS…]`.
#[derive(Args)]
pub struct PsArgs {
    /// docker: show all containers (default: running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// docker: only print container IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// runc (with an ID): table (ps output) or json (the pids); docker
    /// (without): table, table TEMPLATE, json or a template.
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// docker: only the containers that match KEY=VALUE (id, name,
    /// status, ancestor, exited, isolation); repeat a key for either
    /// value, give several keys for all of them.
    #[arg(long = "filter")]
    filter: Vec<String>,
    /// runc: the container ID, then arguments for ps(1) (default -ef).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ID [PS-ARGS]"
    )]
    id_and_ps_args: Vec<String>,
}

pub fn ps(roots: &Roots, a: PsArgs) -> Result<i32> {
    let Some((id, ps_args)) = a.id_and_ps_args.split_first() else {
        return containers::ps(
            roots,
            containers::PsArgs {
                all: a.all,
                quiet: a.quiet,
                format: a.format,
                filter: a.filter,
            },
        );
    };
    let run = || -> Result<i32> {
        if !matches!(a.format.as_deref(), None | Some("table" | "json")) {
            bail!("invalid format option");
        }
        state_or_missing(roots, id)?;
        let pids = oci::pids(roots, id)?;
        if a.format.as_deref() == Some("json") {
            println!("{}", serde_json::to_string(&pids)?);
            return Ok(0);
        }
        let args: Vec<String> = if ps_args.is_empty() {
            vec!["-ef".into()]
        } else {
            ps_args.to_vec()
        };
        print!("{}", host_ps(&args, &pids)?);
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

/// The host's `ps ARGS`, its header and the rows of `pids` only (runc's
/// `ps` and docker's `top` with options).
pub fn host_ps(args: &[String], pids: &[i32]) -> Result<String> {
    let out = std::process::Command::new("ps")
        .args(args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow!("ps {} printed no PID column", args.join(" ")))?;
    let mut kept = format!("{header}\n");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            kept.push_str(l);
            kept.push('\n');
        }
    }
    Ok(kept)
}
