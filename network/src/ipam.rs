//! Addresses, from CNI's host-local plugin called on its own (netavark 1.4
//! has no IPAM of its own and takes the addresses it is given). host-local
//! keeps one lease file per address under a flock, so concurrent runs never
//! get the same address, and a lease is released by (container, interface).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::store::Network;

const CNI_PATH: &str = "/usr/lib/cni";

/// Leases an address on `net` for interface `ifname` of container `id`:
/// `want`, or the next free one.
pub fn allocate(
    data_dir: &Path,
    net: &Network,
    id: &str,
    ifname: &str,
    want: Option<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    if let Some(ip) = want {
        let s = net.subnet();
        if !s.subnet.contains(&ip)
            || ip == s.subnet.network()
            || ip == s.subnet.broadcast()
            || ip == s.gateway
        {
            bail!(
                "--ip {ip} is not a free host address of network {}'s subnet {}",
                net.name,
                s.subnet
            );
        }
    }
    let out = host_local("ADD", data_dir, net, id, ifname, want)?;
    let answer: serde_json::Value =
        serde_json::from_slice(&out).context("reading host-local's answer")?;
    let addr = answer["ips"][0]["address"]
        .as_str()
        .context("host-local gave no address")?;
    let net: ipnet::Ipv4Net = addr.parse().context("host-local's address")?;
    Ok(net.addr())
}

/// Gives back the lease of interface `ifname` of container `id` (no error
/// if it holds none).
pub fn release(data_dir: &Path, net: &Network, id: &str, ifname: &str) -> Result<()> {
    host_local("DEL", data_dir, net, id, ifname, None).map(drop)
}

/// The containers that hold a lease on network `name`, from any `--root`:
/// host-local keeps one file per leased address, named by the address and
/// holding the container's ID and interface.
pub fn holders(data_dir: &Path, name: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(data_dir.join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| text.lines().next().map(|id| id.trim().to_string()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn host_local(
    command: &str,
    data_dir: &Path,
    net: &Network,
    id: &str,
    ifname: &str,
    want: Option<Ipv4Addr>,
) -> Result<Vec<u8>> {
    let plugin = Path::new(CNI_PATH).join("host-local");
    crate::require(&plugin)?;
    let s = net.subnet();
    let config = json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": s.subnet.to_string(), "gateway": s.gateway.to_string() }]],
            "dataDir": data_dir,
        },
    });
    let mut args = "IgnoreUnknown=1".to_string();
    if let Some(ip) = want {
        args.push_str(&format!(";IP={ip}"));
    }
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        // host-local needs no network namespace.
        .env("CNI_NETNS", "/dev/null")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PATH)
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&serde_json::to_vec(&config)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        // CNI errors are {"code", "msg", "details"} on stdout.
        let msg = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["msg"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        bail!("no address on network {}: {msg}", net.name);
    }
    Ok(out.stdout)
}
