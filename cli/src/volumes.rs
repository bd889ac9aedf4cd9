//! `capsa volume …`: docker's commands over capsa-shim's named volumes.

use std::collections::BTreeMap;

use anyhow::Result;
use capsa_shim::{volumes, Roots, EXIT_CAPSA_ERROR};
use clap::{Args, Subcommand};

use crate::table;

#[derive(Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a volume (a random name when none is given).
    Create {
        /// Set metadata: KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Only "local" is supported.
        #[arg(short = 'd', long, default_value = "local")]
        driver: String,
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only print volume names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show volumes as JSON.
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes no container uses.
    #[command(alias = "remove")]
    Rm {
        /// A volume that does not exist is no error.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune {
        /// Do not ask (capsa never asks: accepted for docker's scripts).
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub fn volume(roots: &Roots, args: VolumeArgs) -> Result<i32> {
    match args.command {
        VolumeCommand::Create {
            labels,
            driver,
            name,
        } => {
            if driver != "local" {
                return Err(capsa_shim::CodedError::new(
                    EXIT_CAPSA_ERROR,
                    format!("unsupported volume driver {driver:?}: only local"),
                )
                .into());
            }
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let name = match name {
                Some(n) => n,
                None => capsa_network::random_id()?,
            };
            let (vol, _) = volumes::create(roots, &name, labels)?;
            println!("{}", vol.name);
        }
        VolumeCommand::Ls { quiet } => {
            let all = volumes::list(roots)?;
            if quiet {
                for v in &all {
                    println!("{}", v.name);
                }
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|v| vec![v.driver.clone(), v.name.clone()])
                .collect();
            table::print(&["DRIVER", "VOLUME NAME"], &rows);
        }
        VolumeCommand::Inspect { volumes: names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(volumes::get(roots, n)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm {
            force,
            volumes: names,
        } => {
            let mut failed = false;
            for n in &names {
                match volumes::remove(roots, n, force) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        crate::say_error(format!("{e:#}"));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(EXIT_CAPSA_ERROR);
            }
        }
        VolumeCommand::Prune { force: _ } => {
            println!("Deleted Volumes:");
            for n in volumes::prune(roots)? {
                println!("{n}");
            }
        }
    }
    Ok(0)
}
