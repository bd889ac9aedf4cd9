//! netavark 1.4's command line and JSON, in one place: its input is not a
//! stable API (later versions added fields), so capsa speaks exactly the
//! 1.4 field set, which later versions also accept.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::Network;

pub const NETAVARK: &str = "/usr/lib/podman/netavark";
pub const AARDVARK: &str = "/usr/lib/podman/aardvark-dns";

/// What `netavark setup` and `teardown` read on stdin (`NetworkOptions`).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Options {
    pub container_id: String,
    pub container_name: String,
    /// Per network: how this container joins it.
    pub networks: BTreeMap<String, PerNetwork>,
    /// The networks' definitions, by the same keys.
    pub network_info: BTreeMap<String, Network>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub port_mappings: Vec<PortMapping>,
    /// Upstream servers for aardvark-dns (`--dns`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub dns_servers: Vec<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PerNetwork {
    pub interface_name: String,
    pub static_ips: Vec<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub static_mac: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A published port range as netavark takes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    /// "" for every host address.
    pub host_ip: String,
    /// How many consecutive ports, from both starts.
    pub range: u16,
    pub protocol: crate::ports::Protocol,
}

/// netavark's answer to `setup`, per network (`StatusBlock`).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Status {
    #[serde(default)]
    pub dns_search_domains: Vec<String>,
    #[serde(default)]
    pub dns_server_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Interface {
    pub mac_address: String,
    #[serde(default)]
    pub subnets: Vec<Address>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Address {
    pub ipnet: ipnet::Ipv4Net,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

/// Runs `netavark setup` for `netns` and returns its status per network.
/// `config_dir` holds aardvark-dns's files for this network namespace.
pub fn setup(config_dir: &Path, netns: &Path, opts: &Options) -> Result<BTreeMap<String, Status>> {
    let out = run(config_dir, "setup", netns, opts)?;
    serde_json::from_slice(&out).context("reading netavark's answer to setup")
}

/// Undoes `setup` with the same options.
pub fn teardown(config_dir: &Path, netns: &Path, opts: &Options) -> Result<()> {
    run(config_dir, "teardown", netns, opts).map(drop)
}

fn run(config_dir: &Path, verb: &str, netns: &Path, opts: &Options) -> Result<Vec<u8>> {
    crate::require(NETAVARK)?;
    let mut child = Command::new(NETAVARK)
        .arg("--config")
        .arg(config_dir)
        .args(["--rootless", "false", "--aardvark-binary", AARDVARK, verb])
        .arg(netns)
        // netavark 1.4 speaks iptables (here through iptables-nft).
        .env("NETAVARK_FW", "iptables")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {NETAVARK}"))?;
    let input = serde_json::to_vec(opts)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&input)
        .context("writing netavark's options")?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        // netavark reports errors as {"error": "..."} on stdout or stderr.
        let msg = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| err.to_string());
        bail!("netavark {verb} failed: {msg}");
    }
    Ok(out.stdout)
}
