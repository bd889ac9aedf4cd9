//! `capsa network …` and `capsa port`: docker's commands over
//! capsa-network's store and each container's network state.

use anyhow::{bail, Result};
use capsa_network::{Network, NewNetwork, DEFAULT_NETWORK};
use capsa_shim::record::{Record, Status};
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::table;

#[derive(Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a bridge network; containers on it resolve each other's names.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks as JSON, with the containers on them.
    Inspect { networks: Vec<String> },
    /// Remove networks no container uses.
    Rm { networks: Vec<String> },
    /// Connect a running container to one more network (container mode).
    Connect(ConnectArgs),
    /// Disconnect a running container from a network.
    Disconnect {
        /// Accepted for docker's scripts.
        #[arg(short = 'f', long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove every network no container uses (not the default `bridge`).
    Prune {
        /// Do not ask (capsa never asks: accepted for docker's scripts).
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// IPv4 subnet in CIDR form (default: a free /24 of 10.89.0.0/16).
    #[arg(long)]
    subnet: Option<String>,
    /// The bridge's address (default: the subnet's first host address).
    #[arg(long)]
    gateway: Option<String>,
    /// No route out of the network: containers reach only each other.
    #[arg(long)]
    internal: bool,
    /// Only "bridge" is supported.
    #[arg(short = 'd', long, default_value = "bridge")]
    driver: String,
    name: String,
}

#[derive(Args)]
struct ConnectArgs {
    /// Another name for the container on this network.
    #[arg(long = "alias", value_name = "NAME")]
    aliases: Vec<String>,
    /// The container's IPv4 address on this network.
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    network: String,
    container: String,
}

#[derive(Args)]
struct LsArgs {
    /// Only print network IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn network(roots: &Roots, args: NetworkArgs) -> Result<i32> {
    let paths = capsa_shim::network::paths()?;
    let store = paths.store();
    match args.command {
        NetworkCommand::Create(a) => {
            if a.driver != "bridge" {
                bail!(user(format!(
                    "unsupported network driver {:?}: only bridge",
                    a.driver
                )));
            }
            let _lock = paths.lock()?;
            let net = store
                .create(&NewNetwork {
                    name: a.name,
                    subnet: a.subnet,
                    gateway: a.gateway,
                    internal: a.internal,
                })
                .map_err(|e| user(format!("{e:#}")))?;
            println!("{}", net.id);
        }
        NetworkCommand::Ls(a) => {
            let nets = all(&store)?;
            if a.quiet {
                for n in &nets {
                    println!("{}", &n.id[..12]);
                }
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| {
                    vec![
                        n.id[..12].to_string(),
                        n.name.clone(),
                        n.driver.clone(),
                        n.subnet().subnet.to_string(),
                        n.internal.to_string(),
                    ]
                })
                .collect();
            table::print(
                &["NETWORK ID", "NAME", "DRIVER", "SUBNET", "INTERNAL"],
                &rows,
            );
        }
        NetworkCommand::Inspect { networks } => {
            let recs = Record::list(roots)?;
            let mut out = Vec::new();
            for name in &networks {
                let net = store.get(name).map_err(|e| user(format!("{e:#}")))?;
                out.push(inspect(roots, &net, &recs));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { networks } => {
            let mut failed = false;
            for name in &networks {
                match remove(roots, name) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(EXIT_CAPSA_ERROR);
            }
        }
        NetworkCommand::Connect(a) => {
            let ep = capsa_network::Endpoint {
                network: a.network,
                aliases: a.aliases,
                ip: a.ip,
                mac: None,
            };
            capsa_shim::network::connect(roots, &a.container, ep)?;
        }
        NetworkCommand::Disconnect {
            force: _,
            network,
            container,
        } => capsa_shim::network::disconnect(roots, &container, &network)?,
        NetworkCommand::Prune { force: _ } => {
            println!("Deleted Networks:");
            for n in prune(roots)? {
                println!("{n}");
            }
        }
    }
    Ok(0)
}

/// Removes the user networks no container uses; returns their names.
pub fn prune(roots: &Roots) -> Result<Vec<String>> {
    let store = capsa_shim::network::paths()?.store();
    let recs = Record::list(roots)?;
    Ok(all(&store)?
        .into_iter()
        .filter(|n| n.name != DEFAULT_NETWORK && users(&recs, n).is_empty())
        .filter(|n| remove(roots, &n.name).is_ok())
        .map(|n| n.name)
        .collect())
}

/// Every network, the default `bridge` included.
fn all(store: &capsa_network::Store) -> Result<Vec<Network>> {
    store.get(DEFAULT_NETWORK)?;
    store.list()
}

/// Containers that use `net` now or will when they start.
fn users<'a>(recs: &'a [Record], net: &Network) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.status() != Status::Stopped)
        .filter(|r| {
            r.network.as_ref().is_some_and(|n| {
                n.endpoints
                    .iter()
                    .any(|e| e.network == net.name || e.network == net.id)
            })
        })
        .collect()
}

fn remove(roots: &Roots, name: &str) -> Result<()> {
    let paths = capsa_shim::network::paths()?;
    let store = paths.store();
    let _containers = capsa_shim::record::lock_containers(roots)?;
    let _lock = paths.lock()?;
    let net = store.get(name)?;
    if net.name == DEFAULT_NETWORK {
        bail!("bridge is the default network and cannot be removed");
    }
    let recs = Record::list(roots)?;
    if let Some(r) = users(&recs, &net).first() {
        bail!(
            "network {} is in use by container {} ({}): stop and remove it first",
            net.name,
            r.name,
            r.short_id()
        );
    }
    // Networks are shared by every root (capsa_network::Paths): another
    // root's containers show as the leases they hold.
    if let Some(id) = paths.leaseholders(&net.name).first() {
        bail!(
            "network {} is in use by container {} of another --root: stop and remove it first",
            net.name,
            id.get(..12).unwrap_or(id)
        );
    }
    store.remove(&net)
}

fn inspect(roots: &Roots, net: &Network, recs: &[Record]) -> serde_json::Value {
    let mut containers = serde_json::Map::new();
    for r in users(recs, net) {
        let Some(att) = capsa_shim::network::attachment(roots, &r.id) else {
            continue;
        };
        for i in att.interfaces.iter().filter(|i| i.network == net.name) {
            containers.insert(
                r.id.clone(),
                json!({ "Name": r.name, "MacAddress": i.mac, "IPv4Address": i.address.to_string() }),
            );
        }
    }
    let s = net.subnet();
    json!({
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Driver": net.driver,
        "Internal": net.internal,
        "DNSEnabled": net.dns_enabled,
        "NetworkInterface": net.network_interface,
        "IPAM": { "Driver": "host-local", "Config": [{ "Subnet": s.subnet.to_string(), "Gateway": s.gateway.to_string() }] },
        "Options": net.options,
        "Containers": containers,
    })
}

#[derive(Args)]
pub struct PortArgs {
    container: String,
    /// Only this container port: PORT[/tcp|udp].
    port: Option<String>,
}

/// `capsa port C [PORT[/PROTO]]`: `80/tcp -> 0.0.0.0:8080` per mapping.
pub fn port(roots: &Roots, args: PortArgs) -> Result<i32> {
    let rec = Record::find(roots, &args.container)?;
    let want = match &args.port {
        None => None,
        Some(p) => {
            Some(capsa_network::ports::container_port(p).map_err(|e| user(format!("{e:#}")))?)
        }
    };
    let mut found = false;
    for spec in capsa_shim::network::published(roots, &rec.id) {
        for (i, ctr) in spec.container_ports().enumerate() {
            if want.is_some_and(|w| w != (ctr, spec.protocol)) {
                continue;
            }
            found = true;
            let ip = spec.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            let host = spec.host_port + i as u16;
            if want.is_some() {
                println!("{ip}:{host}");
            } else {
                println!("{ctr}/{} -> {ip}:{host}", spec.protocol);
            }
        }
    }
    if let (false, Some(p)) = (found, &args.port) {
        bail!(user(format!(
            "no public port {p:?} published for {}",
            rec.name
        )));
    }
    Ok(0)
}

fn user(msg: String) -> CodedError {
    CodedError::new(EXIT_CAPSA_ERROR, msg)
}
